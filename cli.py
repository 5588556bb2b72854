"""convscope's command line, the file users run:

    python cli.py info [--weights FILE] [--size 224] [--layer NAME]...
    python cli.py dream photo.jpg --octaves 4
    python cli.py --help

The Typer app and its commands live in the top-level ``commands`` package, beside ``engine``
(which never imports Typer); this file only starts the app. ``convscope`` (the console script
that ``pip install`` makes) is this same ``app``.
"""

import engine  # noqa: F401  first: it tunes the BLAS before NumPy is imported
from commands import app

if __name__ == "__main__":
    app()
