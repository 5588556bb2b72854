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
import time
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



# ------------------------------------------------------------------------------- filters, weights

OutOpt = Annotated[
    Optional[Path], typer.Option("--out", "-o", help="Output picture (PNG, JPEG, ...).", show_default=False)
]
SaveArray = Annotated[
    Optional[Path],
    typer.Option("--save-array", help="Also save the numbers behind the picture as a .npy file.", show_default=False),
]


def check_array_output(path: Optional[Path], overwrite: bool = False) -> Optional[Path]:
    """Check a --save-array path up front (a .npy file that may be written)."""
    return None if path is None else check_output(path, overwrite, suffixes={".npy"})


def save_array(path: Optional[Path], array: np.ndarray, overwrite: bool = False) -> None:
    """Write an array with ``np.save``, atomically (nothing when ``path`` is None)."""
    if path is not None:
        check_array_output(path, overwrite)
        write_output(path, lambda file: np.save(file, np.asarray(array)), overwrite)


@command()
def filters(
    layer: Annotated[str, typer.Option("--layer", "-l", help="Convolution layer whose filters to show.")] = "block5_conv1",
    grid: Annotated[
        int, typer.Option("--grid", help="Grid width; when scanning, the best grid x grid filters are shown.")
    ] = 8,
    size: Annotated[int, typer.Option("--size", help="Side of each filter's picture in pixels.")] = 128,
    steps: Annotated[int, typer.Option("--steps", help="Gradient-ascent steps (per upscaling stage).")] = 20,
    scan: Annotated[int, typer.Option("--scan", help="Scan the first N filters and keep the best.")] = 200,
    chosen: Annotated[
        Optional[str],
        typer.Option("--filters", help="Show these filters in this order instead, e.g. 0-63 or 3,7,9.", show_default=False),
    ] = None,
    step_size: Annotated[float, typer.Option("--step-size", help="Step along the RMS-normalised gradient.")] = 1.0,
    batch: Annotated[int, typer.Option("--batch", help="Filters optimised together (memory grows with it).")] = 32,
    jitter: Annotated[int, typer.Option("--jitter", help="Random shift of up to this many pixels per step.")] = 0,
    scale: Annotated[float, typer.Option("--scale", help="Random rescaling by up to this fraction per step, e.g. 0.05.")] = 0.0,
    rotate: Annotated[float, typer.Option("--rotate", help="Random rotation by up to this many degrees per step.")] = 0.0,
    tv: Annotated[float, typer.Option("--tv", help="Total-variation penalty weight (per input value).")] = 0.0,
    l2: Annotated[float, typer.Option("--l2", help="L2 penalty weight around gray (per input value).")] = 0.0,
    upscale_steps: Annotated[int, typer.Option("--upscale-steps", help="Progressive upscaling stages (0: off).")] = 0,
    upscale_factor: Annotated[float, typer.Option("--upscale-factor", help="Upscaling factor between stages.")] = 1.2,
    margin: Annotated[int, typer.Option("--margin", help="Pixels between pictures.")] = 5,
    weights: Weights = None,
    device: DeviceOpt = Device.cpu,
    seed: Seed = 0,
    out: OutOpt = None,
    overwrite: Overwrite = False,
    array_path: SaveArray = None,
):
    """What each filter responds to: gradient ascent from gray noise (the Keras example), stitched."""
    from engine.viz import transforms as tf
    from engine.viz.filters import parse_filter_spec, visualize_filters
    from engine.viz.pictures import stitch_grid

    if grid < 1 or margin < 0:
        raise ConvscopeError(f"--grid {grid} must be at least 1 and --margin {margin} not negative")
    indices = parse_filter_spec(chosen) if chosen is not None else None
    out = check_output(out if out is not None else Path(f"filters_{layer}.png"), overwrite)
    check_array_output(array_path, overwrite)
    model = load_model(weights, device)
    resolve_layer(model, layer)
    moves = [tf.jitter(jitter)] if jitter > 0 else []
    if scale > 0 or rotate > 0:
        factors = np.linspace(1 - scale, 1 + scale, 5) if scale > 0 else (1.0,)
        degrees = np.linspace(-rotate, rotate, 11) if rotate > 0 else (0.0,)
        moves.append(tf.Affine(factors, degrees))
    start = time.perf_counter()
    with progress(f"filters of {layer}") as update:
        result = visualize_filters(
            model, layer, filters=indices, scan=scan, keep=grid * grid, size=size, steps=steps,
            step_size=step_size, seed=seed, batch=batch, transforms=moves, tv=tv, l2=l2,
            upscale_steps=upscale_steps, upscale_factor=upscale_factor, callback=update,
        )
    elapsed = time.perf_counter() - start
    n_scanned, n_shown = len(result.scanned_filters), len(result.filters)
    if n_shown == 0:
        raise ConvscopeError(
            f"none of the {n_scanned} filters of {layer} scanned kept a positive loss "
            "(try more --steps, --scan or --filters)"
        )
    columns = min(grid, n_shown)
    picture = stitch_grid(result.images, columns=columns, margin=margin)
    if indices is None:
        n_positive = int((result.scanned_losses > 0).sum())
        typer.echo(
            f"{layer}: scanned {n_scanned} filters, {n_positive} with a positive loss; "
            f"showing the best {n_shown}, best first:"
        )
    else:
        typer.echo(f"{layer}: {n_shown} filters, in the order given:")
    for index, loss in zip(result.filters, result.losses):
        typer.echo(f"  filter {int(index):>4}  loss {float(loss):.6g}")
    save_image(out, picture, overwrite)
    save_array(array_path, result.raw, overwrite)
    rows = -(-n_shown // columns)
    typer.echo(
        f"wrote {out} ({picture.shape[1]}x{picture.shape[0]}: {rows} x {columns} pictures of {size} px) "
        f"in {elapsed:.1f} s on {model.device}"
    )


@command("weights")
def show_weights(
    layer: Annotated[str, typer.Option("--layer", "-l", help="Convolution layer whose kernels to show.")] = "block1_conv1",
    max_filters: Annotated[
        Optional[int], typer.Option("--max", help="Show at most this many output filters.", show_default=False)
    ] = None,
    max_inputs: Annotated[
        Optional[int],
        typer.Option("--max-inputs", help="Deeper layers: show at most this many input channels.", show_default=False),
    ] = None,
    zoom: Annotated[int, typer.Option("--zoom", help="Enlarge each kernel value to zoom x zoom pixels.")] = 8,
    margin: Annotated[int, typer.Option("--margin", help="Pixels between kernels.")] = 2,
    columns: Annotated[int, typer.Option("--columns", help="First layer: kernels per row.")] = 8,
    normalize: Annotated[
        str, typer.Option("--normalize", help="'tile': stretch each kernel; 'layer': one scale, zero = gray.")
    ] = "tile",
    rgb: Annotated[
        bool, typer.Option("--rgb", help="The network reads RGB (default: BGR, as VGG16's caffe weights).")
    ] = False,
    weights: Weights = None,
    out: OutOpt = None,
    overwrite: Overwrite = False,
    array_path: SaveArray = None,
):
    """The kernels themselves: first layer as colour tiles, deeper layers as filter x input grids."""
    from engine.viz.kernels_view import view_kernels

    out = check_output(out if out is not None else Path(f"weights_{layer}.png"), overwrite)
    check_array_output(array_path, overwrite)
    model = load_model(weights)
    resolve_layer(model, layer)
    view = view_kernels(
        model, layer, max_filters=max_filters, max_inputs=max_inputs, zoom=zoom, margin=margin,
        columns=columns, channel_order="rgb" if rgb else "bgr", normalize=normalize,
    )
    save_image(out, view.picture, overwrite)
    save_array(array_path, view.tiles, overwrite)
    what = (
        f"{len(view.tiles)} colour kernels ({view.rows} x {view.columns})"
        if view.colour
        else f"{view.rows} filters x {view.columns} input channels"
    )
    typer.echo(f"wrote {out} ({view.picture.shape[1]}x{view.picture.shape[0]}: {what} of {layer})")


# ------------------------------------------------------------------------------- gradcam, activations


class Score(str, Enum):
    logit = "logit"
    probability = "probability"


@command()
def gradcam(
    image: Annotated[Path, typer.Argument(help="Image file (JPEG, PNG, ...).", show_default=False)],
    klass: Annotated[
        Optional[str],
        typer.Option("--class", "-c", help="Class to explain (index or name). Default: the top class.", show_default=False),
    ] = None,
    layer: Annotated[str, typer.Option("--layer", "-l", help="Convolution or pooling layer to weigh.")] = "block5_conv3",
    score: Annotated[
        Score,
        typer.Option("--score", help="'logit': the pre-softmax score (Grad-CAM paper); 'probability': the softmax output (Keras example)."),
    ] = Score.logit,
    alpha: Annotated[float, typer.Option("--alpha", help="Weight of the coloured heatmap over the photo.")] = 0.4,
    weights: Weights = None,
    device: DeviceOpt = Device.cpu,
    out: OutOpt = None,
    overwrite: Overwrite = False,
    array_path: SaveArray = None,
):
    """Where the network sees a class: the Grad-CAM heatmap, jet-coloured, blended over the photo."""
    from engine.images import resize_image
    from engine.preprocess import resize
    from engine.viz.cam import n_classes
    from engine.viz.colormaps import overlay
    from engine.viz.gradcam import grad_cam

    if not 0.0 <= alpha <= 1.0:
        raise ConvscopeError(f"--alpha {alpha}: give a weight between 0 and 1")
    photo = load_image(image)  # a bad image fails before the slow load
    out = check_output(out if out is not None else Path(f"{image.stem}_gradcam.png"), overwrite)
    check_array_output(array_path, overwrite)
    model = load_model(weights, device, need_top=True)
    width_classes = n_classes(model)
    names = class_names_for(width_classes)
    wanted = resolve_class(klass, width_classes, names) if klass is not None else None
    resolve_layer(model, layer)
    height, width = (s or 224 for s in model.input_shape[:2])
    x = engine.preprocess_input(resize_image(photo, (width, height)))
    result = grad_cam(model, x, classes=wanted, layer=layer, score=score.value)

    p = result.probabilities[0]
    for rank, index in enumerate(np.argsort(-p, kind="stable")[:3], start=1):
        typer.echo(f"{rank:>3}. {p[index]:.4f}  {class_label(index, names)}")
    k, heatmap = int(result.classes[0]), result.heatmaps[0]
    label = f"class {k}" + (f" ({names[k]})" if names is not None else "")
    typer.echo(f"Grad-CAM of {layer} for {label}: {score.value} {result.scores[0]:.6g}")
    if heatmap.max() == 0:
        typer.echo(f"note: the heatmap is all zeros (no channel of {layer} speaks for class {k})")
    photo_size = (photo.shape[1], photo.shape[0])
    picture = overlay(photo, np.clip(resize(heatmap, photo_size, "bilinear"), 0.0, 1.0), alpha)
    save_image(out, picture, overwrite)
    save_array(array_path, heatmap, overwrite)
    typer.echo(f"wrote {out} ({photo_size[0]}x{photo_size[1]}; heatmap {_shape_text(heatmap.shape)} at {layer})")


ACTIVATION_GAP = 2  # pixels between tiles
MIN_TILE = 48  # small maps (14x14 at block5) are enlarged to at least this many pixels
TITLE_BAND = 22  # height of the white band that carries the layer's name


def activation_zoom(side: int) -> int:
    """Integer enlargement of a side-pixel map so that its tile is at least MIN_TILE pixels."""
    return max(1, -(-MIN_TILE // max(1, int(side))))


def titled(picture: np.ndarray, title: str) -> np.ndarray:
    """The picture under a white band with the title in PIL's default font."""
    from PIL import Image, ImageDraw

    height, width = picture.shape[:2]
    canvas = Image.new("RGB", (width, height + TITLE_BAND), "white")
    canvas.paste(Image.fromarray(picture), (0, TITLE_BAND))
    ImageDraw.Draw(canvas).text((4, 5), title, fill="black")
    return np.asarray(canvas)


@command()
def activations(
    image: Annotated[Path, typer.Argument(help="Image file (JPEG, PNG, ...).", show_default=False)],
    layers: Annotated[
        Optional[str],
        typer.Option("--layers", help="Comma-separated layer names. Default: the first 8 layers.", show_default=False),
    ] = None,
    size: Annotated[int, typer.Option("--size", help="Input height and width in pixels (VGG16: at least 32).")] = 224,
    weights: Weights = None,
    device: DeviceOpt = Device.cpu,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for the pictures, one PNG per layer (created if missing).")
    ] = Path("activations"),
    overwrite: Overwrite = False,
):
    """What each channel of a layer sees in a photo: every channel a tile, 16 per row, one PNG per layer."""
    from engine.images import resize_image
    from engine.viz.activations import activation_grid, activation_maps, default_layers

    if size < 1:
        raise ConvscopeError(f"--size {size}: give a positive number of pixels")
    photo = load_image(image)  # a bad image fails before the slow load
    if out.exists() and not out.is_dir():
        raise ConvscopeError(f"{out}: is a file; --out names a folder")
    if not out.exists() and not out.absolute().parent.is_dir():
        raise ConvscopeError(f"{out}: folder {out.absolute().parent} does not exist (create it first)")
    model = load_model(weights, device)
    names = [n.strip() for n in layers.split(",") if n.strip()] if layers is not None else default_layers(model)
    names = list(dict.fromkeys(resolve_layer(model, name) for name in names))
    if not names:
        raise ConvscopeError("--layers names no layer: give names like block1_conv1,block2_pool")
    paths = {name: out / f"{name}.png" for name in names}
    if out.is_dir():
        for path in paths.values():
            check_output(path, overwrite)
    maps = activation_maps(model, engine.preprocess_input(resize_image(photo, (size, size))), names)
    out.mkdir(exist_ok=True)
    with progress("writing pictures", total=len(names)) as update:
        for done, name in enumerate(names, start=1):
            a = maps[name][0]
            grid = activation_grid(a, gap=ACTIVATION_GAP, zoom=activation_zoom(min(a.shape[:2])))
            picture = titled(grid, f"{name}  {_shape_text(a.shape)}")
            save_image(paths[name], picture, overwrite)
            typer.echo(f"wrote {paths[name]} ({picture.shape[1]}x{picture.shape[0]}: {a.shape[2]} channels of {_shape_text(a.shape[:2])})")
            update(done)


# ------------------------------------------------------------------------------- saliency, occlusion


class SaliencyMethod(str, Enum):
    vanilla = "vanilla"
    guided = "guided"
    smoothgrad = "smoothgrad"
    integrated = "integrated"
    guided_gradcam = "guided-gradcam"


class IntegrationRule(str, Enum):
    trapezoid = "trapezoid"
    left = "left"
    right = "right"
    middle = "middle"
    gausslegendre = "gausslegendre"


ClassOpt = Annotated[
    Optional[str],
    typer.Option("--class", "-c", help="Class to explain (index or name). Default: the top class.", show_default=False),
]


def network_input(photo: np.ndarray, model) -> np.ndarray:
    """The photo as the classifier sees it: resized to its input size (224), caffe-preprocessed."""
    from engine.images import resize_image

    height, width = (s or 224 for s in model.input_shape[:2])
    return engine.preprocess_input(resize_image(photo, (width, height)))


def echo_top_classes(p: np.ndarray, names, top: int = 3) -> None:
    for rank, index in enumerate(np.argsort(-p, kind="stable")[:top], start=1):
        typer.echo(f"{rank:>3}. {p[index]:.4f}  {class_label(index, names)}")


@command()
def saliency(
    image: Annotated[Path, typer.Argument(help="Image file (JPEG, PNG, ...).", show_default=False)],
    method: Annotated[SaliencyMethod, typer.Option("--method", "-m", help="Attribution method.")] = SaliencyMethod.vanilla,
    klass: ClassOpt = None,
    samples: Annotated[int, typer.Option("--samples", help="smoothgrad: noisy copies averaged.")] = 50,
    noise: Annotated[float, typer.Option("--noise", help="smoothgrad: noise deviation as a fraction of the input range (max - min).")] = 0.15,
    steps: Annotated[int, typer.Option("--steps", help="integrated: points on the path from the black baseline.")] = 50,
    rule: Annotated[IntegrationRule, typer.Option("--rule", help="integrated: quadrature rule.")] = IntegrationRule.trapezoid,
    layer: Annotated[str, typer.Option("--layer", "-l", help="guided-gradcam: the Grad-CAM layer.")] = "block5_conv3",
    batch: Annotated[int, typer.Option("--batch", help="Images per forward/backward pass (memory grows with it).")] = 16,
    weights: Weights = None,
    device: DeviceOpt = Device.cpu,
    seed: Seed = 0,
    out: OutOpt = None,
    overwrite: Overwrite = False,
    array_path: Annotated[
        Optional[Path],
        typer.Option("--save-array", help="Also save the raw attribution, (224, 224, 3) float32 in RGB order, as .npy.", show_default=False),
    ] = None,
):
    """Which pixels the class score depends on: gradients, guided backprop, SmoothGrad, integrated gradients, guided Grad-CAM."""
    from engine.preprocess import resize
    from engine.viz.attribution import attribute
    from engine.viz.attribution.base import check_count
    from engine.viz.attribution.pictures import attribution_picture, clip_scale
    from engine.viz.cam import n_classes

    name = method.value
    options = {"batch": check_count(batch, "--batch")}
    if method is SaliencyMethod.smoothgrad:
        if not (noise >= 0 and np.isfinite(noise)):
            raise ConvscopeError(f"--noise {noise}: give a fraction of the input range, at least 0")
        options.update(samples=check_count(samples, "--samples"), noise=noise, seed=seed)
    elif method is SaliencyMethod.integrated:
        options.update(steps=check_count(steps, "--steps"), rule=rule.value)
    elif method is SaliencyMethod.guided_gradcam:
        options.update(layer=layer)
    photo = load_image(image)  # a bad image fails before the slow load
    out = check_output(out if out is not None else Path(f"{image.stem}_{name}.png"), overwrite)
    check_array_output(array_path, overwrite)
    model = load_model(weights, device, need_top=True)
    width_classes = n_classes(model)
    names = class_names_for(width_classes)
    wanted = resolve_class(klass, width_classes, names) if klass is not None else None
    if method is SaliencyMethod.guided_gradcam:
        resolve_layer(model, layer)
    x = network_input(photo, model)
    start = time.perf_counter()
    with progress(name) as update:
        result = attribute(model, x, name, classes=wanted, progress=update, **options)
    elapsed = time.perf_counter() - start

    echo_top_classes(result.probabilities[0], names)
    k = int(result.classes[0])
    typer.echo(f"{name} for {class_label(k, names) if names is None else f'class {k} ({names[k]})'}: logit {result.scores[0]:.6g}")
    if method is SaliencyMethod.integrated:
        change = result.scores[0] - result.baseline_scores[0]
        error = float(result.completeness_error[0])
        typer.echo(
            f"baseline: a black image (the caffe-preprocessed all-zero RGB picture), logit "
            f"{result.baseline_scores[0]:.6g}; {steps} steps, {rule.value} rule"
        )
        typer.echo(
            f"completeness: attributions sum to {result.totals[0]:.6g}, logit(x) - logit(baseline) = "
            f"{change:.6g}, error {100 * error:.2f}%"
        )
        if error > 0.01:
            typer.echo("note: the error is above 1%: try more --steps (or --rule gausslegendre)")
    photo_size = (photo.shape[1], photo.shape[0])
    scale = clip_scale(result.maps[0], result.signed)
    picture = attribution_picture(resize(result.maps[0], photo_size, "bilinear"), result.signed, scale)
    save_image(out, picture, overwrite)
    save_array(array_path, result.attributions[0][..., ::-1], overwrite)  # BGR network input -> RGB
    colours = "blue-white-red, signed" if result.signed else "gray, |attribution|"
    typer.echo(
        f"wrote {out} ({photo_size[0]}x{photo_size[1]}; {colours}, clipped at the 99th percentile "
        f"{scale:.3g}) in {elapsed:.1f} s on {model.device}"
    )


@command()
def occlusion(
    image: Annotated[Path, typer.Argument(help="Image file (JPEG, PNG, ...).", show_default=False)],
    klass: ClassOpt = None,
    window: Annotated[int, typer.Option("--window", help="Side of the hidden square, in input pixels (of 224).")] = 32,
    stride: Annotated[int, typer.Option("--stride", help="Step between square positions, in input pixels.")] = 8,
    batch: Annotated[int, typer.Option("--batch", help="Occluded copies per forward pass (memory grows with it).")] = 32,
    alpha: Annotated[float, typer.Option("--alpha", help="Weight of the coloured heatmap over the photo.")] = 0.4,
    weights: Weights = None,
    device: DeviceOpt = Device.cpu,
    out: OutOpt = None,
    overwrite: Overwrite = False,
    array_path: Annotated[
        Optional[Path],
        typer.Option("--save-array", help="Also save the (224, 224) drop in probability per pixel as .npy.", show_default=False),
    ] = None,
):
    """Where hiding the photo hurts the class: the drop in its probability as a grey square slides over it."""
    from engine.preprocess import resize
    from engine.viz.attribution.base import check_count
    from engine.viz.cam import n_classes
    from engine.viz.colormaps import overlay
    from engine.viz.occlusion import occlusion as occlusion_map

    if not 0.0 <= alpha <= 1.0:
        raise ConvscopeError(f"--alpha {alpha}: give a weight between 0 and 1")
    window, stride = check_count(window, "--window"), check_count(stride, "--stride")
    batch = check_count(batch, "--batch")
    photo = load_image(image)  # a bad image fails before the slow load
    out = check_output(out if out is not None else Path(f"{image.stem}_occlusion.png"), overwrite)
    check_array_output(array_path, overwrite)
    model = load_model(weights, device, need_top=True)
    width_classes = n_classes(model)
    names = class_names_for(width_classes)
    wanted = resolve_class(klass, width_classes, names) if klass is not None else None
    x = network_input(photo, model)
    start = time.perf_counter()
    with progress("occlusion") as update:
        result = occlusion_map(model, x, classes=wanted, window=window, stride=stride, batch=batch, progress=update)
    elapsed = time.perf_counter() - start

    p = result.probabilities[0]
    echo_top_classes(p, names)
    k, drops, heatmap = int(result.classes[0]), result.drops[0], result.heatmaps[0]
    i, j = np.unravel_index(int(np.argmax(drops)), drops.shape)
    typer.echo(
        f"occlusion for {class_label(k, names) if names is None else f'class {k} ({names[k]})'}: probability {p[k]:.4f}; "
        f"{drops.size} positions ({drops.shape[0]} x {drops.shape[1]}) of a {window} px square"
    )
    typer.echo(
        f"largest drop {drops[i, j]:.4f} with the square at ({int(result.lefts[j])}, {int(result.tops[i])}); "
        f"smallest {drops.min():.4f}"
    )
    peak = float(heatmap.max())
    if peak <= 0:
        typer.echo("note: no position lowers the probability: the heatmap is empty")
    unit = np.clip(heatmap / peak, 0.0, 1.0) if peak > 0 else np.zeros_like(heatmap)
    photo_size = (photo.shape[1], photo.shape[0])
    picture = overlay(photo, np.clip(resize(unit, photo_size, "bilinear"), 0.0, 1.0), alpha)
    save_image(out, picture, overwrite)
    save_array(array_path, heatmap, overwrite)
    typer.echo(
        f"wrote {out} ({photo_size[0]}x{photo_size[1]}; jet, full red at a drop of {max(peak, 0.0):.4f}) "
        f"in {elapsed:.1f} s on {model.device}"
    )


# ------------------------------------------------------------------------------- image folders, feature cache
#
# Dataset commands (neighbors, embed, patches) read a folder recursively. Each per-image array
# they need (features of a layer, channel maxima, small pixel copies, thumbnails) is kept on disk,
# one .npy per image, in a folder named by a hash of everything the array depends on: the weights
# file's identity (size, first and last MiB), the layer, the pooling, the input size, and the
# image file's contents. A second call on the same folder runs no forward pass; a changed file is
# recomputed (its hash changes). Files are written atomically and read without pickles.

CACHE_VERSION = 1
PIXEL_SIDE = 32  # pixel space for neighbours: the images at 32 x 32, RGB values in [0, 1]


def warn(message: str) -> None:
    typer.echo(f"warning: {_one_line(message)}", err=True)


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/convscope, else ~/.cache/convscope."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "convscope"


def folder_files(folder: Path) -> list[Path]:
    """Every regular file under ``folder`` (recursive, sorted, hidden files and folders skipped)."""
    folder = Path(folder)
    if not folder.exists():
        raise ConvscopeError(f"{folder}: no such folder (check the path)")
    if not folder.is_dir():
        raise ConvscopeError(f"{folder}: is not a folder; --images names a folder of images")
    files = sorted(
        p for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    if not files:
        raise ConvscopeError(f"{folder}: the folder holds no files (put images in it)")
    return files


def _blake(*chunks: bytes) -> str:
    import hashlib

    digest = hashlib.blake2b(digest_size=16)
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def file_digest(path: Path) -> str:
    """Hash of a file's contents."""
    import hashlib

    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def weights_identity(path: Path) -> str:
    """Hash of a weights file's size, first MiB and last MiB: cheap, and survives copies."""
    size = os.path.getsize(path)
    with open(path, "rb") as file:
        head = file.read(1 << 20)
        file.seek(max(0, size - (1 << 20)))
        tail = file.read()
    return _blake(str(size).encode(), head, tail)


class FeatureCache:
    """Per-image arrays on disk: ``<root>/<hash of what>/<image hash>.npy``; ``root`` None: off."""

    def __init__(self, root: Optional[Path], *what):
        self.folder = None if root is None else Path(root) / _blake(repr((CACHE_VERSION, *what)).encode())
        self.failed = False

    def get(self, digest: str) -> Optional[np.ndarray]:
        if self.folder is None:
            return None
        try:
            return np.load(self.folder / f"{digest}.npy", allow_pickle=False)
        except (OSError, ValueError, EOFError):  # missing or damaged: compute it again
            return None

    def put(self, digest: str, array: np.ndarray) -> None:
        if self.folder is None or self.failed:
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd, temp = tempfile.mkstemp(prefix=f".{digest}.", suffix=".part", dir=self.folder)
            try:
                with os.fdopen(fd, "wb") as file:
                    np.save(file, np.ascontiguousarray(array))
                os.replace(temp, self.folder / f"{digest}.npy")
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp)
        except OSError as exc:  # a read-only or full cache must not stop the command
            self.failed = True
            warn(f"cannot write the feature cache in {self.folder} ({exc.strerror or exc}); going on without it")


class PerImage:
    """One array per image: ``compute`` maps uint8 RGB images (B, h, w, 3) at ``size`` =
    (width, height) to (B, ...); results live in ``cache``."""

    def __init__(self, cache: FeatureCache, size, compute: Callable):
        self.cache, self.size, self.compute = cache, (int(size[0]), int(size[1])), compute


class Gathered:
    """The readable images' paths, {name: stacked array}, how many files were skipped, and how
    many images needed the first array computed (the network pass) rather than read back."""

    def __init__(self, paths, arrays, skipped, computed):
        self.paths, self.arrays, self.skipped, self.computed = paths, arrays, skipped, computed


def gather(paths, wanted: dict, batch: int = 16, description: str = "images", strict: bool = False) -> Gathered:
    """{name: stacked array} over the readable images in ``paths``, from the cache where possible;
    images missing any array are decoded once, ``batch`` at a time. An unreadable file is skipped
    with a one-line warning (``strict``: it is an error)."""
    from engine.images import resize_image

    n = len(paths)
    digests, results, missing, skipped = [None] * n, {name: [None] * n for name in wanted}, [], set()
    first = next(iter(wanted))
    computed = 0
    for index, path in enumerate(paths):
        try:
            digests[index] = file_digest(path)
        except OSError as exc:
            if strict:
                raise
            warn(f"skipped {path}: {exc.strerror or exc}")
            skipped.add(index)
            continue
        for name, item in wanted.items():
            results[name][index] = item.cache.get(digests[index])
        if any(results[name][index] is None for name in wanted):
            missing.append(index)
    with progress(f"reading {description}", total=len(missing)) as update:
        for start in range(0, len(missing), max(1, batch)):
            decoded = []
            for index in missing[start : start + max(1, batch)]:
                try:
                    decoded.append((index, load_image(paths[index])))
                except ConvscopeError as exc:
                    if strict:
                        raise
                    warn(f"skipped {exc}")
                    skipped.add(index)
            for name, item in wanted.items():
                todo = [(index, rgb) for index, rgb in decoded if results[name][index] is None]
                if not todo:
                    continue
                computed += len(todo) if name == first else 0
                arrays = item.compute(np.stack([resize_image(rgb, item.size) for _, rgb in todo]))
                for (index, _), array in zip(todo, arrays):
                    results[name][index] = array
                    item.cache.put(digests[index], array)
            update(min(start + batch, len(missing)))
    kept = [index for index in range(n) if index not in skipped]
    arrays = {name: np.stack([results[name][i] for i in kept]) if kept else None for name in wanted}
    return Gathered([paths[i] for i in kept], arrays, len(skipped), computed)


def report_gathered(result: Gathered, folder: Path) -> None:
    n = len(result.paths)
    if n == 0:
        raise ConvscopeError(f"{folder}: no readable image in the folder ({result.skipped} files skipped)")
    cached = n - result.computed
    skipped = f"; skipped {result.skipped} unreadable file{'s' if result.skipped != 1 else ''}" if result.skipped else ""
    typer.echo(f"{folder}: {n} images ({cached} from the cache, {result.computed} computed){skipped}")


ImagesDir = Annotated[
    Path,
    typer.Option("--images", "-i", help="Folder of images, searched recursively; unreadable files are skipped.", show_default=False),
]
CacheDir = Annotated[
    Optional[Path],
    typer.Option("--cache-dir", help="Feature cache folder. Default: $XDG_CACHE_HOME/convscope or ~/.cache/convscope.", show_default=False),
]
NoCache = Annotated[bool, typer.Option("--no-cache", help="Neither read nor write the feature cache.")]
BatchOpt = Annotated[int, typer.Option("--batch", help="Images per forward pass (memory grows with it).")]
SizeOpt = Annotated[
    Optional[int],
    typer.Option("--size", help="Network input height and width (default 224, or the file's fixed size).", show_default=False),
]


class Pooling(str, Enum):
    avg = "avg"
    flatten = "flatten"


class Metric(str, Enum):
    cosine = "cosine"
    l2 = "l2"


class EmbedMethod(str, Enum):
    pca = "pca"
    tsne = "tsne"


PoolingOpt = Annotated[
    Pooling,
    typer.Option("--pool", help="Conv/pool layers: 'avg' = global average per channel; 'flatten' = every value. Dense layers: as they are."),
]


def cache_root(cache_dir: Optional[Path], no_cache: bool) -> Optional[Path]:
    return None if no_cache else (cache_dir if cache_dir is not None else default_cache_dir())


def dataset_model(weights: Optional[Path], device: Device, layer: Optional[str]):
    """The model and the feature layer: by default the last hidden dense layer (fc2) when the file
    has the classifier, else the last spatial layer (block5_pool)."""
    from engine.viz.receptive import receptive_fields

    model = load_model(weights, device)
    if layer is not None and layer not in model.layer_names and not model.has_classifier and weights is None:
        with contextlib.suppress(ConvscopeError):  # a dense layer: the classifier file, if there is one
            model = load_model(None, device, need_top=True)
    spatial = list(receptive_fields(model))
    dense = [l.name for l in model.layers if l.kind == "dense"]
    if layer is None:
        return model, dense[-2] if len(dense) >= 2 else spatial[-1]
    if layer not in model.layer_names and layer != "logits" and not model.has_classifier:
        raise ConvscopeError(
            f"layer {layer!r} is not in {model.path}, a file without the classifier (notop): give "
            f"--weights with the classifier file for dense layers, or use a layer such as {spatial[-1]}"
        )
    return model, resolve_layer(model, layer)


def dataset_input_hw(model, size: Optional[int], layer: str) -> tuple[int, int]:
    """(height, width) of the network input, checked to fit the layers up to ``layer``."""
    if size is not None and size < 1:
        raise ConvscopeError(f"--size {size}: give a positive number of pixels")
    fixed = model.input_shape[:2]
    hw = (size, size) if size is not None else (fixed if fixed[0] else (224, 224))
    model.output_shapes(hw, upto=model.layer_index(layer))
    return hw


def feature_source(model, root, layer: str, pooling: str, hw, batch: int) -> PerImage:
    from engine.viz.dataset import image_features

    cache = FeatureCache(root, "features", weights_identity(model.path), layer, pooling, tuple(hw))
    return PerImage(cache, (hw[1], hw[0]), lambda images: image_features(model, images, layer, pooling, batch))


def picture_source(root, side: int) -> PerImage:
    """The images themselves at side x side (uint8): pixel vectors and thumbnails."""
    return PerImage(FeatureCache(root, "pixels", side), (side, side), lambda images: images)


def write_text(path: Path, text: str, overwrite: bool = False) -> Path:
    return write_output(path, lambda file: file.write(text.encode("utf-8")), overwrite)


# ------------------------------------------------------------------------------- neighbors, embed, patches


@command()
def neighbors(
    query: Annotated[Path, typer.Argument(help="The query image.", show_default=False)],
    images: ImagesDir,
    top: Annotated[int, typer.Option("--top", "-k", help="How many neighbours per row.")] = 8,
    layer: Annotated[
        Optional[str],
        typer.Option("--layer", "-l", help="Feature layer. Default: fc2 with the classifier file, else block5_pool.", show_default=False),
    ] = None,
    pooling: PoolingOpt = Pooling.avg,
    metric: Annotated[Metric, typer.Option("--metric", help="Feature distance: 'cosine' (1 - cos) or 'l2'.")] = Metric.cosine,
    size: SizeOpt = None,
    thumb: Annotated[int, typer.Option("--thumb", help="Thumbnail side in pixels.")] = 96,
    batch: BatchOpt = 16,
    cache_dir: CacheDir = None,
    no_cache: NoCache = False,
    weights: Weights = None,
    device: DeviceOpt = Device.cpu,
    out: OutOpt = None,
    overwrite: Overwrite = False,
):
    """Nearest neighbours of an image in a folder: in feature space (top row) and in pixel space (bottom row).

    Pixel space is the images at 32 x 32 (RGB in [0, 1]) with the L2 distance. The query itself
    (the same path) is never its own neighbour; another copy of it is, at distance 0.
    """
    from engine.viz.dataset import captioned_row, nearest, pixel_vectors, side_by_side, stack_rows

    if top < 1 or thumb < 8:
        raise ConvscopeError(f"--top {top} must be at least 1 and --thumb {thumb} at least 8")
    query_picture = load_image(query, size=(thumb, thumb))  # a bad query fails before the slow load
    files = folder_files(images)
    out = check_output(out if out is not None else Path(f"{query.stem}_neighbors.png"), overwrite)
    model, layer = dataset_model(weights, device, layer)
    hw = dataset_input_hw(model, size, layer)
    root = cache_root(cache_dir, no_cache)
    wanted = {
        "features": feature_source(model, root, layer, pooling.value, hw, batch),
        "pixels": picture_source(root, PIXEL_SIDE),
    }
    found = gather(files, wanted, batch, f"{len(files)} files")
    report_gathered(found, images)
    mine = gather([query], wanted, strict=True)
    exclude = [i for i, path in enumerate(found.paths) if path.resolve() == query.resolve()]
    rows = []
    for what, title, items, q, how in (
        ("features", f"features: {layer} ({pooling.value}), {metric.value}", found.arrays["features"],
         mine.arrays["features"][0], metric.value),
        ("pixels", f"pixels: {PIXEL_SIDE}x{PIXEL_SIDE} RGB, l2", pixel_vectors(found.arrays["pixels"]),
         pixel_vectors(mine.arrays["pixels"])[0], "l2"),
    ):
        indices, dist = nearest(q, items, top, how, exclude=exclude)
        if len(indices) == 0:
            raise ConvscopeError(f"{images}: no image other than the query to compare with")
        typer.echo(f"{title}:")
        for rank, (i, d) in enumerate(zip(indices, dist), start=1):
            typer.echo(f"{rank:>3}. {d:.4f}  {found.paths[i]}")
        thumbs = np.stack([load_image(found.paths[i], size=(thumb, thumb)) for i in indices])
        rows.append(titled(captioned_row(thumbs, [f"{d:.3f}" for d in dist]), title))
    left = titled(captioned_row(query_picture[None], [query.name[: thumb // 6]]), "query")
    picture = side_by_side(left, stack_rows(rows))
    save_image(out, picture, overwrite)
    typer.echo(f"wrote {out} ({picture.shape[1]}x{picture.shape[0]})")


@command()
def embed(
    images: ImagesDir,
    method: Annotated[EmbedMethod, typer.Option("--method", help="'pca' (numpy SVD) or 'tsne' (needs the tsne extra).")] = EmbedMethod.pca,
    layer: Annotated[
        Optional[str],
        typer.Option("--layer", "-l", help="Feature layer. Default: fc2 with the classifier file, else block5_pool.", show_default=False),
    ] = None,
    pooling: PoolingOpt = Pooling.avg,
    perplexity: Annotated[float, typer.Option("--perplexity", help="t-SNE perplexity (capped at (n - 1) / 3).")] = 30.0,
    canvas: Annotated[int, typer.Option("--canvas", help="Side of the square picture in pixels.")] = 2000,
    thumb: Annotated[int, typer.Option("--thumb", help="Thumbnail side in pixels.")] = 64,
    size: SizeOpt = None,
    batch: BatchOpt = 16,
    cache_dir: CacheDir = None,
    no_cache: NoCache = False,
    weights: Weights = None,
    device: DeviceOpt = Device.cpu,
    seed: Seed = 0,
    out: OutOpt = None,
    csv_path: Annotated[
        Optional[Path], typer.Option("--csv", help="Coordinates as CSV (path,x,y). Default: the picture's name with .csv.", show_default=False)
    ] = None,
    overwrite: Overwrite = False,
):
    """A folder's images placed at a 2-D embedding of their features (later images on top), and the coordinates as CSV."""
    import csv
    import io

    from engine.viz.dataset import embedding_canvas, pca_2d, require_tsne, tsne_2d, tsne_perplexity

    if thumb < 1 or canvas < thumb:
        raise ConvscopeError(f"--thumb {thumb} must be at least 1 and --canvas {canvas} at least the thumbnail")
    if method == EmbedMethod.tsne:
        require_tsne()
        if perplexity <= 0:
            raise ConvscopeError(f"--perplexity {perplexity}: give a positive number")
    files = folder_files(images)
    out = check_output(out if out is not None else Path(f"embed_{method.value}.png"), overwrite)
    csv_path = check_output(csv_path if csv_path is not None else out.with_suffix(".csv"), overwrite, suffixes={".csv"})
    model, layer = dataset_model(weights, device, layer)
    hw = dataset_input_hw(model, size, layer)
    root = cache_root(cache_dir, no_cache)
    wanted = {
        "features": feature_source(model, root, layer, pooling.value, hw, batch),
        "thumbs": picture_source(root, thumb),
    }
    found = gather(files, wanted, batch, f"{len(files)} files")
    report_gathered(found, images)
    if len(found.paths) < 2:
        raise ConvscopeError(f"{images}: an embedding needs at least 2 readable images, found {len(found.paths)}")
    if method == EmbedMethod.pca:
        coords = pca_2d(found.arrays["features"])
        how = "PCA"
    else:
        coords = tsne_2d(found.arrays["features"], perplexity, seed)
        how = f"t-SNE (perplexity {tsne_perplexity(len(coords), perplexity):g})"
    picture = embedding_canvas(found.arrays["thumbs"], coords, canvas)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["path", "x", "y"])
    for path, (x, y) in zip(found.paths, coords):
        writer.writerow([str(path), f"{x:.9g}", f"{y:.9g}"])
    save_image(out, picture, overwrite)
    write_text(csv_path, text.getvalue(), overwrite)
    typer.echo(f"wrote {out} ({canvas}x{canvas}: {len(coords)} images by {how} of {layer}) and {csv_path}")


@command()
def patches(
    images: ImagesDir,
    layer: Annotated[str, typer.Option("--layer", "-l", help="Convolution or pooling layer.")] = "block4_conv1",
    channels: Annotated[str, typer.Option("--channels", help="Channels, e.g. 0-15 or 3,7,9 (one row each).")] = "0-15",
    top: Annotated[int, typer.Option("--top", "-k", help="Images per channel, strongest first.")] = 9,
    size: Annotated[int, typer.Option("--size", help="Network input height and width; patches are cut from the images at this size.")] = 224,
    margin: Annotated[int, typer.Option("--margin", help="Pixels between patches.")] = 2,
    batch: BatchOpt = 16,
    cache_dir: CacheDir = None,
    no_cache: NoCache = False,
    weights: Weights = None,
    device: DeviceOpt = Device.cpu,
    out: OutOpt = None,
    overwrite: Overwrite = False,
):
    """The image regions that excite each channel most: the receptive field of each image's arg-max, one row per channel.

    Each image gives at most one patch per channel (its strongest position). Parts of a field
    beyond the image border show the network's zero padding (the ImageNet mean colour).
    """
    from engine.viz.dataset import image_channel_maxima, patch_tiles, top_patches
    from engine.viz.filters import parse_filter_spec
    from engine.viz.pictures import enlarge, stitch_grid
    from engine.viz.receptive import receptive_field

    chosen = parse_filter_spec(channels)
    if top < 1 or margin < 0:
        raise ConvscopeError(f"--top {top} must be at least 1 and --margin {margin} not negative")
    files = folder_files(images)
    out = check_output(out if out is not None else Path(f"patches_{layer}.png"), overwrite)
    model = load_model(weights, device)
    field = receptive_field(model, layer)
    hw = dataset_input_hw(model, size, layer)
    n_channels = model.output_shapes(hw, upto=model.layer_index(layer))[-1][-1]
    if max(chosen) >= n_channels:
        raise ConvscopeError(f"channel {max(chosen)} is out of range: {layer} has {n_channels} channels (0 to {n_channels - 1})")

    def maxima(batch_images):  # (B, 3, C) float64: value, row, column
        values, positions = image_channel_maxima(model, batch_images, layer, batch)
        return np.concatenate([values[:, None, :].astype(np.float64), positions.transpose(0, 2, 1).astype(np.float64)], axis=1)

    cache = FeatureCache(cache_root(cache_dir, no_cache), "channel-maxima", weights_identity(model.path), layer, tuple(hw))
    found = gather(files, {"maxima": PerImage(cache, (hw[1], hw[0]), maxima)}, batch, f"{len(files)} files")
    report_gathered(found, images)
    packed = found.arrays["maxima"]
    values, positions = packed[:, 0, :], packed[:, 1:, :].transpose(0, 2, 1).astype(np.int64)
    best = top_patches(values, positions, field, hw, chosen, top)
    sources = {int(i): load_image(found.paths[int(i)], size=(hw[1], hw[0])) for i in np.unique(best.images)}
    tiles = patch_tiles(sources, best, field)
    rows, columns = tiles.shape[:2]
    zoom = activation_zoom(min(field.size))
    tiles = enlarge(tiles.reshape((rows * columns,) + tiles.shape[2:]), zoom)
    picture = stitch_grid(tiles, rows=rows, columns=columns, margin=margin, fill=255)
    for row, channel in enumerate(best.channels):
        i = best.images[row, 0]
        typer.echo(
            f"channel {int(channel):>4}: max {best.values[row, 0]:.4g} in {found.paths[int(i)]} "
            f"at {tuple(int(v) for v in best.positions[row, 0])}, field {tuple(int(v) for v in best.boxes[row, 0])}"
        )
    save_image(out, picture, overwrite)
    typer.echo(
        f"wrote {out} ({picture.shape[1]}x{picture.shape[0]}: {rows} channels x {columns} patches of "
        f"{field.size[0]} px, the receptive field of {layer})"
    )


# ------------------------------------------------------------------------------- fool, invert, texture


class FoolMethod(str, Enum):
    iterative = "iterative"
    fgsm = "fgsm"


class Optimizer(str, Enum):
    auto = "auto"
    lbfgs = "lbfgs"
    adam = "adam"


def output_prefix(out: Optional[Path], default: str) -> Path:
    """--out as a prefix: 'runs/koala' -> runs/koala.png, runs/koala_diff.png, ... (a suffix is dropped)."""
    prefix = Path(out) if out is not None else Path(default)
    return prefix.with_suffix("") if prefix.suffix.lower() in IMAGE_SUFFIXES else prefix


def side_by_side(pictures, gap: int = 4) -> np.ndarray:
    """Equal-height uint8 RGB pictures in a row on white, ``gap`` pixels apart."""
    height = max(p.shape[0] for p in pictures)
    width = sum(p.shape[1] for p in pictures) + gap * (len(pictures) - 1)
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    left = 0
    for p in pictures:
        canvas[: p.shape[0], left : left + p.shape[1]] = p
        left += p.shape[1] + gap
    return canvas


def _top_text(p, names, k=3) -> str:
    order = np.argsort(-p, kind="stable")[:k]
    return ", ".join(f"{class_label(int(i), names)} {p[i]:.4f}" for i in order)


@command()
def fool(
    images: Annotated[list[Path], typer.Argument(help="Image file(s) (JPEG, PNG, ...).", show_default=False)],
    target: Annotated[
        list[str],
        typer.Option("--target", "-t", help="Class to reach (index or name); repeat for several (one per image, or all for one image).", show_default=False),
    ],
    method: Annotated[FoolMethod, typer.Option("--method", help="'iterative' (Adam, L2 penalty, stops at --confidence) or 'fgsm' (one signed step).")] = FoolMethod.iterative,
    confidence: Annotated[float, typer.Option("--confidence", help="Iterative: stop once p(target) reaches this.")] = 0.99,
    steps: Annotated[int, typer.Option("--steps", help="Iterative: at most this many steps.")] = 100,
    lr: Annotated[float, typer.Option("--lr", help="Iterative: Adam step in pixel levels (0-255).")] = 0.5,
    l2: Annotated[float, typer.Option("--l2", help="Iterative: weight of (1/2)||x - x0||^2 (pixel levels).")] = 1e-4,
    epsilon: Annotated[float, typer.Option("--epsilon", help="FGSM: step in pixel levels (0-255).")] = 2.0,
    amplify: Annotated[float, typer.Option("--amplify", help="Difference picture: change x this, around gray.")] = 10.0,
    weights: Weights = None,
    device: DeviceOpt = Device.cpu,
    out: Annotated[
        Optional[Path],
        typer.Option("--out", "-o", help="Prefix: writes PREFIX.png, PREFIX_diff.png, PREFIX_compare.png (default <image>_fool).", show_default=False),
    ] = None,
    overwrite: Overwrite = False,
):
    """Adversarial image: change a photo as little as possible until the network says --target."""
    from engine.images import resize_image
    from engine.viz.fool import change_size, fgsm, fool as fool_images

    if method == FoolMethod.iterative and (steps < 1 or not 0 < confidence < 1):
        raise ConvscopeError(f"--steps {steps} must be at least 1 and --confidence {confidence} between 0 and 1")
    photos = [load_image(path) for path in images]  # bad images fail before the slow load
    n = max(len(photos), len(target))
    if len(photos) != n and len(photos) != 1 or len(target) != n and len(target) != 1:
        raise ConvscopeError(f"{len(images)} images and {len(target)} targets: give one target per image, or one of either")
    sources = [images[0 if len(images) == 1 else i] for i in range(n)]
    base = output_prefix(out, f"{images[0].stem}_fool")
    prefixes = [base] if n == 1 else [base.with_name(f"{base.name}_{i}") for i in range(n)]
    paths = [{kind: p.with_name(p.name + suffix) for kind, suffix in (("image", ".png"), ("diff", "_diff.png"), ("compare", "_compare.png"))} for p in prefixes]
    for group in paths:
        for path in group.values():
            check_output(path, overwrite)
    model = load_model(weights, device, need_top=True)
    n_classes = model.layers[-1].kernel.shape[1]
    names = class_names_for(n_classes)
    targets = [resolve_class(t, n_classes, names) for t in target]
    targets = np.array(targets * n if len(targets) == 1 else targets)
    height, width = (s or 224 for s in model.input_shape[:2])
    rgb = np.stack([resize_image(photos[0 if len(photos) == 1 else i], (width, height)) for i in range(n)])
    x = engine.preprocess_input(rgb)
    start = time.perf_counter()
    if method == FoolMethod.fgsm:
        result = fgsm(model, x, targets, epsilon=epsilon)
    else:
        with progress("fooling", total=steps) as update:
            result = fool_images(model, x, targets, confidence=confidence, steps=steps, lr=lr, l2=l2,
                                 callback=lambda step, loss: update(step + 1))
    elapsed = time.perf_counter() - start
    new_rgb = engine.deprocess(result.images)
    saved_p = model.predict(engine.preprocess_input(new_rgb))  # what the saved 8-bit files get
    size_l2, size_linf = change_size(rgb.astype(np.float32), new_rgb.astype(np.float32))
    for i in range(n):
        k = int(targets[i])
        p0, p1 = result.original_probabilities[i], saved_p[i]
        what = f"{method.value}, {int(result.steps[i])} step(s)" + (f", epsilon {epsilon:g}" if method == FoolMethod.fgsm else "")
        typer.echo(f"{sources[i]} -> {class_label(k, names)} ({what}):")
        typer.echo(f"  original: {_top_text(p0, names)}")
        typer.echo(f"  new:      {_top_text(p1, names)}")
        reached = p1[k] >= confidence if method == FoolMethod.iterative else int(np.argmax(p1)) == k
        typer.echo(f"  p(target) {p0[k]:.4f} -> {p1[k]:.4f} ({'reached' if reached else 'NOT reached'}); "
                   f"change: L2 {size_l2[i]:.2f}, L-inf {size_linf[i]:.0f} pixel levels")
        diff = new_rgb[i].astype(np.float32) - rgb[i].astype(np.float32)
        diff_picture = np.clip(np.rint(128 + amplify * diff), 0, 255).astype(np.uint8)
        top0, top1 = int(np.argmax(p0)), int(np.argmax(p1))
        compare = side_by_side([
            titled(rgb[i], f"{class_label(top0, names)} {p0[top0]:.3f}"),
            titled(new_rgb[i], f"{class_label(top1, names)} {p1[top1]:.3f}"),
            titled(diff_picture, f"change x{amplify:g}"),
        ])
        for kind, picture in (("image", new_rgb[i]), ("diff", diff_picture), ("compare", compare)):
            save_image(paths[i][kind], picture, overwrite)
        typer.echo(f"  wrote {paths[i]['image']}, {paths[i]['diff'].name}, {paths[i]['compare'].name}")
    typer.echo(f"done in {elapsed:.1f} s on {model.device}")


@command()
def invert(
    image: Annotated[Path, typer.Argument(help="Image file (JPEG, PNG, ...).", show_default=False)],
    layer: Annotated[
        str, typer.Option("--layer", "-l", help="Layer(s) to invert, comma-separated, or 'all' (each block's last convolution).")
    ] = "block4_conv1",
    size: Annotated[int, typer.Option("--size", help="Input height and width in pixels.")] = 224,
    steps: Annotated[int, typer.Option("--steps", help="Adam steps.")] = 200,
    lr: Annotated[float, typer.Option("--lr", help="Adam step in pixel levels.")] = 2.0,
    lambda_alpha: Annotated[float, typer.Option("--lambda-alpha", help="Weight of the alpha-norm (alpha 6, B 80).")] = 1e-3,
    lambda_tv: Annotated[float, typer.Option("--lambda-tv", help="Weight of the total variation (beta 2).")] = 0.5,
    weights: Weights = None,
    device: DeviceOpt = Device.cpu,
    seed: Seed = 0,
    out: OutOpt = None,
    overwrite: Overwrite = False,
):
    """Feature inversion (Mahendran & Vedaldi): what a layer still knows of the photo, one picture per layer."""
    from engine.images import resize_image
    from engine.viz.invert import block_layers
    from engine.viz.invert import invert as invert_image

    if size < 1 or steps < 1:
        raise ConvscopeError(f"--size {size} and --steps {steps} must be positive")
    photo = load_image(image)
    out = check_output(out if out is not None else Path(f"{image.stem}_invert.png"), overwrite)
    model = load_model(weights, device)
    names = block_layers(model) if layer == "all" else [resolve_layer(model, n.strip()) for n in layer.split(",") if n.strip()]
    if not names:
        raise ConvscopeError("--layer names no layer: give e.g. block4_conv1, a comma list, or 'all'")
    rgb = resize_image(photo, (size, size))
    with progress(f"inverting {len(names)} layer(s)", total=steps) as update:
        result = invert_image(model, engine.preprocess_input(rgb), names, steps=steps, lr=lr,
                              lambda_alpha=lambda_alpha, lambda_tv=lambda_tv, seed=seed,
                              callback=lambda step, loss: update(step + 1))
    pictures = engine.deprocess(result.images)
    for i, name in enumerate(result.layers):
        typer.echo(f"{name}: loss {result.losses[0, i]:.4g} -> {result.losses[-1, i]:.4g} "
                   f"(feature term {result.feature_losses[i]:.4g}) in {len(result.losses)} steps")
    strip = side_by_side([titled(rgb, "original")] + [titled(p, n) for p, n in zip(pictures, result.layers)])
    save_image(out, strip, overwrite)
    typer.echo(f"wrote {out} ({strip.shape[1]}x{strip.shape[0]}: the photo and {len(names)} reconstruction(s))")


@command()
def texture(
    image: Annotated[Path, typer.Argument(help="Texture / style image (JPEG, PNG, ...).", show_default=False)],
    content: Annotated[
        Optional[Path], typer.Option("--content", help="Style transfer: render this photo in the image's style.", show_default=False)
    ] = None,
    size: Annotated[int, typer.Option("--size", help="Height and width of the result (and of the style image).")] = 224,
    steps: Annotated[int, typer.Option("--steps", help="Optimiser iterations (L-BFGS: network passes).")] = 200,
    method: Annotated[Optimizer, typer.Option("--method", help="'lbfgs' (needs scipy: the texture extra), 'adam', or 'auto'.")] = Optimizer.auto,
    style_layers: Annotated[
        Optional[str], typer.Option("--style-layers", help="Comma-separated Gram layers (default: each block's first conv).", show_default=False)
    ] = None,
    content_layer: Annotated[
        Optional[str], typer.Option("--content-layer", help="Content layer (default block4_conv2, else the deepest conv).", show_default=False)
    ] = None,
    content_weight: Annotated[float, typer.Option("--content-weight", help="Weight of the content term.")] = 1.0,
    tv: Annotated[float, typer.Option("--tv", help="Total-variation weight.")] = 0.1,
    lr: Annotated[float, typer.Option("--lr", help="Adam step in pixel levels.")] = 4.0,
    weights: Weights = None,
    device: DeviceOpt = Device.cpu,
    seed: Seed = 0,
    out: OutOpt = None,
    overwrite: Overwrite = False,
):
    """Gram-matrix texture synthesis (Gatys et al.), or style transfer with --content."""
    from engine.images import resize_image
    from engine.viz.texture import _lbfgs, synthesize

    if size < 1 or steps < 1:
        raise ConvscopeError(f"--size {size} and --steps {steps} must be positive")
    if method == Optimizer.lbfgs:
        _lbfgs()  # a missing scipy fails before any work
    style_rgb = resize_image(load_image(image), (size, size))
    content_rgb = resize_image(load_image(content), (size, size)) if content is not None else None
    default = f"{image.stem}_texture.png" if content is None else f"{content.stem}_as_{image.stem}.png"
    out = check_output(out if out is not None else Path(default), overwrite)
    model = load_model(weights, device)
    layers = [resolve_layer(model, n.strip()) for n in style_layers.split(",") if n.strip()] if style_layers else None
    if content_layer is not None:
        resolve_layer(model, content_layer)
    with progress("texture", total=steps) as update:
        result = synthesize(
            model, engine.preprocess_input(style_rgb), content=None if content_rgb is None else engine.preprocess_input(content_rgb),
            style_layers=layers, content_layer=content_layer, content_weight=content_weight, tv_weight=tv,
            steps=steps, method=method.value, lr=lr, seed=seed, callback=lambda step, loss: update(min(step + 1, steps)),
        )
    picture = engine.deprocess(result.images)[0]
    losses = result.losses[:, 0]
    typer.echo(f"{result.method}: loss {losses[0]:.4g} -> {losses[-1]:.4g} in {len(losses)} network passes; "
               f"Gram layers {', '.join(result.style_layers)}" + (f"; content {result.content_layer}" if result.content_layer else ""))
    save_image(out, picture, overwrite)
    typer.echo(f"wrote {out} ({picture.shape[1]}x{picture.shape[0]})")


# ------------------------------------------------------------------------------- dream, classmax


def parse_layer_weights(text: str) -> dict:
    """'block4_conv3=1.0,block5_conv1=0.5' (a bare name weighs 1.0) -> {name: weight}."""
    layers = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, _, weight = item.partition("=")
        try:
            layers[name.strip()] = float(weight) if weight.strip() else 1.0
        except ValueError:
            raise ConvscopeError(f"--layers: {item!r} is not NAME=WEIGHT (e.g. block4_conv3=1.0)") from None
    if not layers:
        raise ConvscopeError("--layers names no layer: give e.g. block4_conv3=1.0,block5_conv1=0.5")
    return layers


@command()
def dream(
    image: Annotated[Path, typer.Argument(help="Photo to dream on (JPEG, PNG, ...).", show_default=False)],
    layers: Annotated[
        Optional[str],
        typer.Option(
            "--layers",
            help="NAME=WEIGHT,... whose mean squared activations to raise. Default: "
            "block4_conv3=1.0,block5_conv1=0.5, or the network's last two convolutions.",
            show_default=False,
        ),
    ] = None,
    octaves: Annotated[int, typer.Option("--octaves", help="Scales, smallest first, each octave-scale times larger.")] = 4,
    octave_scale: Annotated[float, typer.Option("--octave-scale", help="Size ratio between octaves.")] = 1.4,
    steps: Annotated[int, typer.Option("--steps", help="Gradient-ascent steps per octave.")] = 20,
    step_size: Annotated[
        float, typer.Option("--step-size", help="Step along the mean-|g|-normalised gradient, in caffe units (0..255 scale).")
    ] = 1.275,  # engine.viz.dream.DEFAULT_STEP_SIZE: Keras' 0.01 for [-1, 1] inputs, in caffe units
    max_loss: Annotated[
        Optional[float], typer.Option("--max-loss", help="End an octave once its loss exceeds this.", show_default=False)
    ] = None,
    tile: Annotated[int, typer.Option("--tile", help="Compute gradients in windows of this many pixels (bounds memory).")] = 512,
    roll: Annotated[int, typer.Option("--roll", help="Random circular shift of up to this many pixels per step (0: off).")] = 0,
    weights: Weights = None,
    device: DeviceOpt = Device.cpu,
    seed: Seed = 0,
    out: OutOpt = None,
    overwrite: Overwrite = False,
    array_path: SaveArray = None,
):
    """DeepDream (the Keras deep_dream example): raise chosen layers' activations over octaves; the photo's size."""
    from engine.viz.dream import deep_dream, default_layers

    photo = load_image(image)  # a bad image fails before the slow load
    out = check_output(out if out is not None else Path(f"{image.stem}_dream.png"), overwrite)
    check_array_output(array_path, overwrite)
    model = load_model(weights, device)
    chosen = parse_layer_weights(layers) if layers is not None else default_layers(model)
    shown = ",".join(f"{name}={weight:g}" for name, weight in chosen.items())
    typer.echo(f"dreaming {image} ({photo.shape[1]}x{photo.shape[0]}) with {shown}")
    start = time.perf_counter()
    with progress("dreaming", total=octaves * steps) as update:
        result = deep_dream(
            model, engine.preprocess_input(photo), layers=chosen, octaves=octaves, octave_scale=octave_scale,
            steps=steps, step_size=step_size, max_loss=max_loss, tile=tile, roll=roll, seed=seed,
            callback=lambda octave, step, loss: update(octave * steps + step + 1),
        )
    for octave, (shape, losses) in enumerate(zip(result.shapes, result.losses), start=1):
        if len(losses):
            typer.echo(
                f"  octave {octave}/{len(result.shapes)} {shape[1]}x{shape[0]}: loss {losses[0, 0]:.6g} -> "
                f"{losses[-1, 0]:.6g} ({len(losses)} steps)"
            )
    picture = engine.deprocess(result.images[0])
    save_image(out, picture, overwrite)
    save_array(array_path, result.images[0], overwrite)
    typer.echo(f"wrote {out} ({picture.shape[1]}x{picture.shape[0]}) in {time.perf_counter() - start:.1f} s on {model.device}")


@command()
def classmax(
    klass: Annotated[
        list[str],
        typer.Option("--class", "-c", help="Class to draw (index or name); repeat for several, optimised as one batch.", show_default=False),
    ],
    steps: Annotated[int, typer.Option("--steps", help="Gradient-ascent steps.")] = 200,
    step_size: Annotated[float, typer.Option("--step-size", help="Step along the RMS-normalised gradient, in caffe units.")] = 2.0,
    score: Annotated[
        Score, typer.Option("--score", help="'logit': the pre-softmax class score; 'probability': the softmax output.")
    ] = Score.logit,
    l2_decay: Annotated[float, typer.Option("--l2-decay", help="Shrink the image by this fraction each step (0: off).")] = 1e-4,
    blur_every: Annotated[int, typer.Option("--blur-every", help="Gaussian blur every this many steps (0: off).")] = 4,
    blur_sigma: Annotated[float, typer.Option("--blur-sigma", help="Width of the blur in pixels.")] = 0.5,
    jitter: Annotated[int, typer.Option("--jitter", help="Random shift of up to this many pixels per step (0: off).")] = 4,
    clip_norm: Annotated[
        float, typer.Option("--clip-norm", help="Zero the pixels whose norm is below this percentile each step (0: off).")
    ] = 0.0,
    clip_contribution: Annotated[
        float,
        typer.Option("--clip-contribution", help="Zero the pixels contributing least (below this percentile) each step; costs a pass."),
    ] = 0.0,
    weights: Weights = None,
    device: DeviceOpt = Device.cpu,
    seed: Seed = 0,
    out: OutOpt = None,
    overwrite: Overwrite = False,
    array_path: SaveArray = None,
):
    """What the network thinks a class looks like: ascent on its score from noise (Yosinski et al. 2015)."""
    from engine.viz.classmax import class_model
    from engine.viz.pictures import stitch_grid

    model = load_model(weights, device, need_top=True)
    if not model.has_classifier:
        raise ConvscopeError(
            f"classmax needs the VGG16 file with the classifier "
            f"(vgg16_weights_tf_dim_ordering_tf_kernels.h5); {model.path} has none (a 'notop' file)"
        )
    n_classes = model.layers[-1].kernel.shape[1]
    names = class_names_for(n_classes)
    classes = [resolve_class(value, n_classes, names) for value in klass]
    default = "classmax_" + "_".join(str(k) for k in classes) + ".png"
    out = check_output(out if out is not None else Path(default), overwrite)
    check_array_output(array_path, overwrite)
    start = time.perf_counter()
    with progress("class models", total=steps) as update:
        result = class_model(
            model, classes, steps=steps, step_size=step_size, score=score.value, l2_decay=l2_decay,
            blur_every=blur_every, blur_sigma=blur_sigma, jitter=jitter, clip_norm=clip_norm,
            clip_contribution=clip_contribution, seed=seed, callback=lambda step, loss: update(step + 1),
        )
    for i, k in enumerate(classes):
        p = result.probabilities[i]
        top = ", ".join(f"{class_label(j, names)} {p[j]:.4f}" for j in result.top(3)[i])
        typer.echo(f"{class_label(k, names)} (class {k}): probability {p[k]:.4f}; top-3: {top}")
    pictures = engine.deprocess(result.images)
    picture = pictures[0] if len(classes) == 1 else stitch_grid(pictures, rows=1, margin=5, fill=255)
    save_image(out, picture, overwrite)
    save_array(array_path, result.images, overwrite)
    typer.echo(f"wrote {out} ({picture.shape[1]}x{picture.shape[0]}) in {time.perf_counter() - start:.1f} s on {model.device}")


if __name__ == "__main__":
    app()
