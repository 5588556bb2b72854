"""convscope's command line: one small function per command, on top of the ``engine`` API.

    python cli.py info [--weights FILE] [--size 224] [--layer NAME]...
    python cli.py predict photo.jpg [more.jpg ...] [--weights FILE] [--top 5] [--class K]

The CLI owns everything the engine must not do: finding and offering to download weight files,
reading images, progress bars, and writing output files (atomically, never over an existing file
unless --overwrite is given, never leaving a partial file behind).

Adding a command: write one function decorated with ``@command()``, take the shared options below
(``Weights``, ``DeviceOpt``, ``Seed``, ``Out``, ``Overwrite``) as parameters, call
``load_model(...)``, ``read_images(...)``, ``check_output(...)`` / ``save_image(...)`` and
``progress(...)``. Any ``ConvscopeError`` (or ``OSError``) escaping a command is printed as one
``error: ...`` line on stderr with exit status 1; mistyped options and arguments give one
``error: ...`` line with status 2.
"""

import contextlib
import functools
import os
import sys
import tempfile
from enum import Enum
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer
from typer.core import TyperGroup

import engine  # first: it tunes the BLAS before NumPy is imported
from engine.errors import ConvscopeError
from engine.images import load_image

import numpy as np  # noqa: E402

# ------------------------------------------------------------------------------- the app


# Typer >= 0.24 vendors Click (typer._click); older versions use click itself. Take the classes
# from typer's own exceptions so that both work.
_ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
_NoArgsIsHelp = getattr(sys.modules[_ClickException.__module__], "NoArgsIsHelpError", ())


class _OneLineErrors(TyperGroup):
    """Usage errors as one ``error: ...`` line (Typer's default is a multi-line panel)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _NoArgsIsHelp as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except _ClickException as exc:
            ctx = getattr(exc, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            _print_error(exc.format_message() + hint)
            sys.exit(exc.exit_code)
        except typer.Abort:
            _print_error("aborted")
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


app = typer.Typer(
    cls=_OneLineErrors,
    help="See inside convolutional networks: VGG16 from the original Keras h5 files, no framework.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,  # a bug should show a plain traceback
)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _print_error(message: str) -> None:
    typer.echo(f"error: {_one_line(message)}", err=True)


def command(*args, **kwargs):
    """``@app.command`` that turns user errors into one ``error: ...`` line and exit status 1."""

    def register(function):
        @functools.wraps(function)
        def run(*a, **kw):
            try:
                return function(*a, **kw)
            except ConvscopeError as exc:
                _print_error(str(exc))
            except OSError as exc:  # the file system refused (permissions, disk full, ...)
                where = f"{exc.filename}: " if exc.filename else ""
                _print_error(f"{where}{exc.strerror or exc}")
            raise typer.Exit(1)

        app.command(*args, **kwargs)(run)
        return function

    return register


# ------------------------------------------------------------------------------- shared options


class Device(str, Enum):
    cpu = "cpu"
    cuda = "cuda"
    auto = "auto"


Weights = Annotated[
    Optional[Path],
    typer.Option(
        "--weights",
        "-w",
        help="Keras h5 weights file. Default: $CONVSCOPE_WEIGHTS, then the Keras cache "
        "~/.keras/models/ (the official VGG16 files).",
        show_default=False,
    ),
]
DeviceOpt = Annotated[
    Device, typer.Option("--device", help="Where to compute; 'auto' picks CUDA when usable.")
]
Seed = Annotated[int, typer.Option("--seed", help="Seed for every random choice (same seed, same output).")]
Out = Annotated[Path, typer.Option("--out", "-o", help="Output file (PNG, JPEG, ...).")]
Overwrite = Annotated[
    bool, typer.Option("--overwrite", "--force", "-f", help="Replace the output file if it exists.")
]


# ------------------------------------------------------------------------------- progress


def _interactive(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


@contextlib.contextmanager
def progress(description: str, total: Optional[float] = None):
    """A progress bar on stderr, shown only when stderr is a terminal (tests and pipes stay clean).

    Yields ``update(done, total=None)``, the callback shape that long-running engine functions take
    (their ``progress=`` argument): call it with the work done so far, and the total when known.
    The bar appears at the first update, so a question asked before the work starts (a download
    confirmation) is not drawn over.
    """
    if not _interactive(sys.stderr):
        yield lambda done, total=None, **_: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeRemainingColumn())
    bar = Progress(*columns, console=Console(stderr=True), transient=True)
    task = None

    def update(done, total=total, **_):
        nonlocal task
        if task is None:
            bar.start()
            task = bar.add_task(description, total=total)
        bar.update(task, completed=done, **({"total": total} if total is not None else {}))

    try:
        yield update
    finally:
        if task is not None:
            bar.stop()


# ------------------------------------------------------------------------------- inputs


def _ask(prompt: str) -> bool:
    return typer.confirm(prompt, default=False, err=True)


def _download_offer():
    """The engine's ``download=`` argument: ask the user, but only at an interactive terminal."""
    return _ask if _interactive(sys.stdin) and _interactive(sys.stderr) else None


def resolve_weights(path: Optional[Path], need_top: bool = False) -> Path:
    """The weights file to use (--weights, $CONVSCOPE_WEIGHTS, the Keras cache); when there is
    none, offer the download at a terminal, with a progress bar; otherwise a one-line error."""
    from engine import resources

    with progress("downloading weights") as update:
        return resources.resolve_weights(path, need_top=need_top, download=_download_offer(), progress=update)


def load_model(weights: Optional[Path], device: Device = Device.cpu, need_top: bool = False):
    """Resolve the weights file (offering a download) and load it with ``engine.load``."""
    path = resolve_weights(weights, need_top=need_top)
    return engine.load(path, device=Device(device).value)


def read_images(paths, size=None) -> np.ndarray:
    """uint8 RGB images, (N, H, W, 3), all resized to ``size`` = (width, height) when given."""
    images = [load_image(path, size=size) for path in paths]
    shapes = {image.shape for image in images}
    if len(shapes) > 1:
        raise ConvscopeError(f"images differ in size ({len(shapes)} sizes); resize them to one size")
    return np.stack(images)


def resolve_layer(model, name: str) -> str:
    """A layer name the model has (or 'logits'); a one-line error naming the layers otherwise."""
    model.layer_index(name)
    return name


def class_names_for(n_classes: int):
    """The ImageNet class names when available and they fit the classifier, else None."""
    from engine import resources

    names = resources.load_class_names(download=_download_offer())
    return names if names is not None and len(names) == n_classes else None


def resolve_class(value: str, n_classes: int, names=None) -> int:
    """A class given as an index ('281') or, when names are known, a name ('tabby')."""
    text = value.strip()
    if text.lstrip("-").isdigit():
        index = int(text)
        if not 0 <= index < n_classes:
            raise ConvscopeError(
                f"class {index} is out of range: the classifier has {n_classes} classes "
                f"(0 to {n_classes - 1})"
            )
        return index
    if names is None:
        raise ConvscopeError(
            f"class {value!r} is not an index and no class names are available: give 0 to {n_classes - 1}"
        )
    wanted = text.lower().replace(" ", "_")
    for index, name in enumerate(names):
        if name.lower() == wanted:
            return index
    raise ConvscopeError(f"unknown class {value!r}: give a class index 0 to {n_classes - 1} or an ImageNet class name")


def class_label(index: int, names=None) -> str:
    return names[index] if names is not None else f"class {index}"


# ------------------------------------------------------------------------------- outputs


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"}


def check_output(path: Path, overwrite: bool = False, suffixes=IMAGE_SUFFIXES) -> Path:
    """Check up front (before any long computation) that ``path`` can be written."""
    path = Path(path)
    if path.is_dir():
        raise ConvscopeError(f"{path}: is a directory; give a file name")
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise ConvscopeError(
            f"{path}: unsupported output type '{path.suffix}' (use {', '.join(sorted(suffixes))})"
        )
    parent = path.parent
    if not parent.is_dir():
        raise ConvscopeError(f"{path}: folder {parent} does not exist (create it first)")
    if path.exists() and not overwrite:
        raise ConvscopeError(f"{path}: already exists (pass --overwrite to replace it)")
    if not os.access(parent, os.W_OK):
        raise ConvscopeError(f"{path}: folder {parent} is not writable")
    return path


def write_output(path: Path, write: Callable, overwrite: bool = False) -> Path:
    """Write a file atomically: ``write(binary_file)`` fills a temporary file in the same folder,
    which then replaces ``path`` in one step. Without ``overwrite`` an existing file is never
    replaced, even one created meanwhile (hard link, which fails if the name exists). On any
    failure, or Ctrl-C, the temporary file is removed and ``path`` is untouched.
    """
    path = check_output(path, overwrite, suffixes=None)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        if overwrite:
            os.replace(temp, path)
        else:
            try:
                os.link(temp, path)
            except FileExistsError:
                raise ConvscopeError(f"{path}: already exists (pass --overwrite to replace it)") from None
            except OSError:  # file systems without hard links
                if path.exists():
                    raise ConvscopeError(f"{path}: already exists (pass --overwrite to replace it)") from None
                os.replace(temp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
    return path


def save_image(path: Path, rgb: np.ndarray, overwrite: bool = False) -> Path:
    """Save a uint8 RGB (H, W, 3) or grayscale (H, W) picture, format from the file suffix."""
    from PIL import Image

    path = check_output(path, overwrite)
    fmt = Image.registered_extensions()[path.suffix.lower()]
    picture = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8))
    return write_output(path, lambda file: picture.save(file, format=fmt), overwrite)


def _shape_text(shape) -> str:
    return "x".join(str(s) for s in shape)


# ------------------------------------------------------------------------------- commands


@command()
def info(
    weights: Weights = None,
    size: Annotated[
        Optional[int],
        typer.Option("--size", help="Input height and width for the shapes (default 224 or the file's fixed size)."),
    ] = None,
    layer: Annotated[
        Optional[list[str]], typer.Option("--layer", "-l", help="Show only this layer (repeatable).")
    ] = None,
):
    """The network layer by layer: kind, output shape, parameters; totals and where it came from."""
    model = load_model(weights)
    if size is not None and size < 1:
        raise ConvscopeError(f"--size {size}: give a positive number of pixels")
    fixed = model.input_shape[:2]
    hw = (size, size) if size is not None else (fixed if fixed[0] else (224, 224))
    rows = model.summary(input_size=hw)
    if layer:
        wanted = [resolve_layer(model, name) for name in layer]
        rows = [row for row in rows if row[0] in wanted]

    channels = model.input_shape[2]
    free = "any size" if fixed[0] is None else f"fixed {_shape_text(fixed)}"
    typer.echo(f"weights: {model.path}")
    typer.echo(f"layout:  {model.spec.source}")
    typer.echo(f"input:   {_shape_text((*hw, channels))} ({free}); device {model.device}")
    typer.echo("")
    name_width = max([len("layer")] + [len(row[0]) for row in rows])
    typer.echo(f"  {'layer':<{name_width}}  {'kind':<9}  {'output':<12}  {'params':>12}")
    if not layer:
        typer.echo(f"  {'input':<{name_width}}  {'input':<9}  {_shape_text((*hw, channels)):<12}  {0:>12,}")
    for name, kind, shape, n_params in rows:
        typer.echo(f"  {name:<{name_width}}  {kind:<9}  {_shape_text(shape):<12}  {n_params:>12,}")
    total = model.n_params
    typer.echo("")
    typer.echo(
        f"total: {total:,} parameters in {len(model.layer_names)} layers after the input "
        f"({total * 4 / 2**20:.1f} MiB as float32); classifier: {'yes' if model.has_classifier else 'no'}"
    )


@command()
def predict(
    images: Annotated[list[Path], typer.Argument(help="Image files (JPEG, PNG, ...).", show_default=False)],
    weights: Weights = None,
    device: DeviceOpt = Device.cpu,
    top: Annotated[int, typer.Option("--top", "-k", help="How many classes to show.")] = 5,
    klass: Annotated[
        Optional[str],
        typer.Option("--class", "-c", help="Also show this class (index or name)."),
    ] = None,
):
    """The top classes for each image, as Keras' VGG16 example: resize to 224x224, caffe-preprocess."""
    if top < 1:
        raise ConvscopeError(f"--top {top}: give at least 1")
    from engine.images import resize_image

    pictures = [load_image(path) for path in images]  # bad images fail before the slow load
    model = load_model(weights, device, need_top=True)
    if not model.has_classifier:
        raise ConvscopeError(
            f"predict needs the VGG16 file with the classifier "
            f"(vgg16_weights_tf_dim_ordering_tf_kernels.h5); {model.path} has none (a 'notop' file)"
        )
    height, width = (s or 224 for s in model.input_shape[:2])
    batch = np.stack([resize_image(picture, (width, height)) for picture in pictures])
    probabilities = model.predict(engine.preprocess_input(batch))
    n_classes = probabilities.shape[1]
    names = class_names_for(n_classes)
    wanted = resolve_class(klass, n_classes, names) if klass is not None else None
    top = min(top, n_classes)
    for path, p in zip(images, probabilities):
        if len(images) > 1:
            typer.echo(f"{path}:")
        order = np.argsort(-p, kind="stable")
        for rank, index in enumerate(order[:top], start=1):
            typer.echo(f"{rank:>3}. {p[index]:.4f}  {class_label(index, names)}")
        if wanted is not None:
            rank = int(np.flatnonzero(order == wanted)[0]) + 1
            typer.echo(f"  class {wanted} ({class_label(wanted, names)}): {p[wanted]:.4f}, rank {rank}")


if __name__ == "__main__":
    app()
