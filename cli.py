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
    typer.echo(f"{name} for class {k} ({class_label(k, names)}): logit {result.scores[0]:.6g}")
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
        f"occlusion for class {k} ({class_label(k, names)}): probability {p[k]:.4f}; "
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


if __name__ == "__main__":
    app()
