"""convscope's command line, the file users run:

    python cli.py info [--weights FILE] [--size 224] [--layer NAME]...
    python cli.py predict photo.jpg [more.jpg ...] [--weights FILE] [--top 5] [--class K]
    python cli.py --help

The app and its commands live in engine/cli/ (see engine/cli/__init__.py for why and how to add
a command); this file only starts it.
"""

import engine  # noqa: F401  first: it tunes the BLAS before NumPy is imported
from engine.cli import app
from engine.cli.common import progress, resolve_class
from engine.cli.features import ACTIVATION_GAP, activation_zoom
from engine.cli.outputs import TITLE_BAND, check_output, save_image, write_output

__all__ = [
    "app", "progress", "resolve_class", "check_output", "save_image", "write_output",
    "ACTIVATION_GAP", "TITLE_BAND", "activation_zoom",
]

if __name__ == "__main__":
    app()
