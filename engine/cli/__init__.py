"""convscope's command line: the Typer app, its commands in the order ``--help`` lists them.

Why the CLI lives in engine/: the product card fixes the top level to engine/, kernels/, cli.py,
tests/, benchmarks/ and pyproject.toml, and cli.py (the file users run) had grown to ~1700 lines,
against the house rule of small files, one idea each. So cli.py only starts this app, and the
commands live here, one module per family of techniques. engine/cli is the only part of engine/
that touches user files and the screen (weights lookup and download offers, reading images,
progress bars, writing pictures); everything else in engine/ stays pure: arrays in, arrays out.

    common.py        one-line errors, ``@command``, shared options, progress, inputs
    outputs.py       atomic output files, --overwrite, shared picture layouts (titles, rows)
    basic.py         info, predict
    features.py      filters, weights, activations
    attribution.py   gradcam, saliency, occlusion
    dataset.py       neighbors, embed, patches (image folders)
    folder_cache.py  the per-image feature cache of the folder commands
    synthesis.py     fool, invert, texture, dream, classmax
    report.py        report: one HTML page of the photo techniques

The CLI owns everything the engine must not do: finding and offering to download weight files,
reading images, progress bars, and writing output files (atomically, never over an existing file
unless --overwrite is given, never leaving a partial file behind).

Adding a command: write one function decorated with ``@command()`` in the module of its family,
take the shared options of common.py (``Weights``, ``DeviceOpt``, ``Seed``, ``Out``,
``Overwrite``) as parameters, call ``load_model(...)``, ``read_images(...)``,
``check_output(...)`` / ``save_image(...)`` and ``progress(...)``, and add it to the list below.
Any ``ConvscopeError`` (or ``OSError``) escaping a command is printed as one ``error: ...`` line on
stderr with exit status 1; mistyped options and arguments give one ``error: ...`` line with
status 2.
"""

import typer

from engine.cli.attribution import gradcam, occlusion, saliency
from engine.cli.basic import info, predict
from engine.cli.common import _OneLineErrors, register
from engine.cli.dataset import embed, neighbors, patches
from engine.cli.features import activations, filters, show_weights
from engine.cli.report import report
from engine.cli.synthesis import classmax, dream, fool, invert, texture

app = typer.Typer(
    cls=_OneLineErrors,
    help="See inside convolutional networks: VGG16 from the original Keras h5 files, no framework.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,  # a bug should show a plain traceback
)

COMMANDS = (
    info, predict, filters, show_weights, gradcam, activations, saliency, occlusion,
    neighbors, embed, patches, fool, invert, texture, dream, classmax, report,
)
register(app, COMMANDS)
