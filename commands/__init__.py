"""convscope's command line: the Typer app, its commands in the order ``--help`` lists them.

The command line sits beside the engine, not inside it: ``import engine`` (what embedders use)
never imports Typer or this package. ``cli.py`` at the top level only starts ``app``. Everything
the engine must not do lives here: finding and offering to download weight files, reading the
user's images, progress bars, and writing output files.

    common.py        one-line errors, ``@command``, shared options, progress, inputs
    outputs.py       atomic output files, --overwrite, --save-array
    pictures.py      pictures several commands compose (heatmaps, activation grids, titles, rows)
    basic.py         info, predict
    features.py      filters, weights, activations
    attribution.py   gradcam, saliency, occlusion
    dataset.py       neighbors, embed, patches (image folders)
    scale.py         features, and the --store options (Zarr store on Dask)
    atlas.py         atlas: an activation atlas from a store
    folder_cache.py  the per-image feature cache of the folder commands
    synthesis.py     fool, invert, texture, dream, classmax
    report.py        report: one HTML page of the photo techniques

Adding a command: write one function decorated with ``@command()`` in the module of its family,
take the shared options of common.py (``Weights``, ``DeviceOpt``, ``Seed``, ``Out``,
``Overwrite``) as parameters, call ``load_model(...)``, ``read_images(...)``,
``check_output(...)`` / ``save_image(...)`` and ``progress(...)``, and add it to the list below.
Any ``ConvscopeError`` (or ``OSError``) escaping a command is printed as one ``error: ...`` line on
stderr with exit status 1; mistyped options and arguments give one ``error: ...`` line with
status 2.
"""

import engine  # noqa: F401  first: it tunes the BLAS before NumPy is imported
from typing import Annotated

import typer

from commands.atlas import atlas
from commands.attribution import gradcam, occlusion, saliency
from commands.basic import info, predict
from commands.common import _OneLineErrors, register
from commands.dataset import embed, neighbors, patches
from commands.features import activations, filters, show_weights
from commands.report import report
from commands.scale import features
from commands.synthesis import classmax, dream, fool, invert, texture

app = typer.Typer(
    cls=_OneLineErrors,
    help="See inside convolutional networks: VGG16 from the original Keras h5 files, no framework.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,  # a bug should show a plain traceback
)

COMMANDS = (
    info, predict, filters, show_weights, gradcam, activations, saliency, occlusion,
    neighbors, embed, patches, features, atlas, fool, invert, texture, dream, classmax, report,
)
register(app, COMMANDS)


def _show_version(value: bool):
    if value:
        from importlib import metadata

        try:
            version = metadata.version("convscope")
        except metadata.PackageNotFoundError:
            version = "(not installed)"
        typer.echo(f"convscope {version}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool, typer.Option("--version", help="Show convscope's version and exit.", callback=_show_version, is_eager=True)
    ] = False,
):
    """See inside convolutional networks: VGG16 from the original Keras h5 files, no framework."""
