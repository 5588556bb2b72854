"""The CLI's shared parts: one-line errors, the ``command`` decorator, the shared options, the
progress bar, and reading the user's inputs (weights, images, layers, classes)."""

import contextlib
import functools
import importlib
import math
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer
from typer.core import TyperGroup

import engine
from engine.errors import ConvscopeError
from engine.images import load_image


# Typer >= 0.24 vendors Click (typer._click); older versions use click itself. Take the classes
# from typer's own exceptions so that both work.
_ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
_NoArgsIsHelp = getattr(sys.modules[_ClickException.__module__], "NoArgsIsHelpError", ())
_click_globals = importlib.import_module(_ClickException.__module__.rsplit(".", 1)[0] + ".globals")


def command_name() -> str:
    """The name of the running command ('saliency'), for messages."""
    context = _click_globals.get_current_context(silent=True)
    return getattr(context, "info_name", None) or "this command"


class _OneLineErrors(TyperGroup):
    """Usage errors as one ``error: ...`` line (Typer's default is a multi-line panel); flags
    (bool options) shown in ``--help`` without a ``<bool>`` value they do not take."""

    def get_command(self, ctx, name):
        found = super().get_command(ctx, name)
        if found is not None:
            _plain_flags(found.get_params(ctx))
        return found

    def get_params(self, ctx):
        return _plain_flags(super().get_params(ctx))

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


def _plain_flags(params):
    for param in params:
        if getattr(param, "is_flag", False):
            param.metavar = ""
    return params


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def _print_error(message: str) -> None:
    typer.echo(f"error: {one_line(message)}", err=True)


def command(*args, **kwargs):
    """Mark a function as a command (``app.command``'s arguments) whose user errors become one
    ``error: ...`` line and exit status 1. ``register`` adds it to the app; the list of commands,
    in the order ``--help`` shows them, is in commands/__init__.py."""

    def mark(function):
        @functools.wraps(function)
        def run(*a, **kw):
            try:
                check_finite(kw)
                return function(*a, **kw)
            except ConvscopeError as exc:
                _print_error(str(exc))
            except OSError as exc:  # the file system refused (permissions, disk full, ...)
                where = f"{exc.filename}: " if exc.filename else ""
                _print_error(f"{where}{exc.strerror or exc}")
            raise typer.Exit(1)

        function.cli_command = (args, kwargs, run)
        return function

    return mark


def check_finite(values: dict) -> None:
    """A one-line error for any float option that is NaN or infinite (before any work)."""
    for name, value in values.items():
        if isinstance(value, float) and not math.isfinite(value):
            flag = "--" + name.replace("_", "-")
            context = _click_globals.get_current_context(silent=True)
            for param in getattr(getattr(context, "command", None), "params", ()):
                if param.name == name and param.opts:
                    flag = max(param.opts, key=len)
            raise ConvscopeError(f"{flag} {value}: give a finite number")


def register(app: typer.Typer, functions) -> typer.Typer:
    """Add ``@command()`` functions to ``app``, in the order given."""
    for function in functions:
        args, kwargs, run = function.cli_command
        app.command(*args, **kwargs)(run)
    return app


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
Out = Annotated[
    Optional[Path], typer.Option("--out", "-o", help="Output picture (PNG, JPEG, ...).", show_default=False)
]
SaveArray = Annotated[
    Optional[Path],
    typer.Option("--save-array", help="Also save the numbers behind the picture as a .npy file.", show_default=False),
]
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


def require_classifier(model, command: str) -> None:
    """A one-line error when the weights file has no classifier (a 'notop' file)."""
    if not model.has_classifier:
        raise ConvscopeError(
            f"{command} needs the VGG16 file with the classifier "
            f"(vgg16_weights_tf_dim_ordering_tf_kernels.h5); {model.path} has none (a 'notop' file)"
        )


def read_images(paths, size=None) -> np.ndarray:
    """uint8 RGB images, (N, H, W, 3), all resized to ``size`` = (width, height) when given."""
    images = [load_image(path, size=size) for path in paths]
    shapes = {image.shape for image in images}
    if len(shapes) > 1:
        raise ConvscopeError(f"images differ in size ({len(shapes)} sizes); resize them to one size")
    return np.stack(images)


def resolve_layer(model, name: str) -> str:
    """A layer name the model has (or 'logits' when it has a classifier); a one-line error
    naming the layers otherwise."""
    from engine.model import LOGITS

    if model.has_classifier or (name != LOGITS and name in model.layer_names):
        model.layer_index(name)  # the engine's error names every layer, and 'logits'
        return name
    why = f"{model.path} has no classifier, so no 'logits'" if name == LOGITS else f"unknown layer {name!r}"
    raise ConvscopeError(f"{why}: this network has {', '.join(model.layer_names)}")


ClassIndex = Annotated[
    Optional[Path],
    typer.Option(
        "--class-index",
        help="ImageNet class names (Keras' imagenet_class_index.json). Default: $CONVSCOPE_CLASS_INDEX, "
        "the file beside --weights, then the Keras cache (offering a download).",
        show_default=False,
    ),
]


def class_names_for(n_classes: int, model=None, class_index: Optional[Path] = None):
    """The ImageNet class names when available and they fit the classifier, else None: from
    ``class_index``, $CONVSCOPE_CLASS_INDEX, ``imagenet_class_index.json`` beside the model's
    weights file, the Keras cache, or a download (offered at a terminal; a failure is noted)."""
    import os

    from engine import resources

    beside = None if model is None or model.path is None else Path(model.path).parent / resources.CLASS_INDEX_FILE
    if class_index is None and not os.environ.get(resources.CLASS_INDEX_ENV) and beside is not None and beside.is_file():
        class_index = beside
    names = resources.load_class_names(class_index, download=_download_offer(),
                                       report=lambda message: typer.echo(f"note: {message}", err=True))
    if names is not None and len(names) != n_classes:
        typer.echo(f"note: the class index has {len(names)} classes, the classifier {n_classes}: "
                   "showing class numbers", err=True)
        return None
    return names


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


def explained_class(model, klass: Optional[str], class_index: Optional[Path] = None):
    """(class names or None, the --class index or None: each image's top class) for a command that
    explains one class; a one-line error for a file without the classifier."""
    from engine.viz.attribution.base import n_classes

    require_classifier(model, command_name())
    width = n_classes(model)
    names = class_names_for(width, model, class_index)
    return names, (resolve_class(klass, width, names) if klass is not None else None)


def class_label(index: int, names=None) -> str:
    return names[index] if names is not None else f"class {index}"


def class_text(index: int, names=None) -> str:
    """'class 281 (tabby)', or 'class 281' without names."""
    return f"class {index}" + (f" ({names[index]})" if names is not None else "")


def shape_text(shape) -> str:
    return "x".join(str(s) for s in shape)


class Score(str, Enum):
    logit = "logit"
    probability = "probability"


ClassOpt = Annotated[
    Optional[str],
    typer.Option("--class", "-c", help="Class to explain (index or name). Default: the top class.", show_default=False),
]


def input_hw(model, size: Optional[int]) -> tuple[int, int]:
    """(height, width) of the network input: --size, else the file's fixed size, else 224."""
    if size is not None and size < 1:
        raise ConvscopeError(f"--size {size}: give a positive number of pixels")
    fixed = model.input_shape[:2]
    return (size, size) if size is not None else (fixed if fixed[0] else (224, 224))


def network_input(photo: np.ndarray, model) -> np.ndarray:
    """The photo as the classifier sees it: resized to its input size (224), caffe-preprocessed."""
    from engine.images import resize_image

    height, width = (s or 224 for s in model.input_shape[:2])
    return engine.preprocess_input(resize_image(photo, (width, height)))


def echo_top_classes(p: np.ndarray, names, top: int = 3) -> None:
    for rank, index in enumerate(np.argsort(-p, kind="stable")[:top], start=1):
        typer.echo(f"{rank:>3}. {p[index]:.4f}  {class_label(index, names)}")


# ------------------------------------------------------------------------------- folder commands


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
    """(height, width) of the network input (``input_hw``), checked to fit the layers up to ``layer``."""
    hw = input_hw(model, size)
    model.output_shapes(hw, upto=model.layer_index(layer))
    return hw
