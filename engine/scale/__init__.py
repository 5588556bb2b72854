"""Dataset views at scale: a Zarr feature store filled by Dask workers, and the neighbours,
embeddings and top-activating patches read from it.

The pieces that need the optional ``scale`` extra (dask.distributed, zarr, pynndescent, openTSNE,
umap-learn) import it inside their functions, through ``require``, so that importing this package
costs nothing and a missing extra is one line naming the install command. ``digest`` needs only
the standard library and also serves the single-process folder cache.
"""

from engine.errors import ConvscopeError

SCALE_EXTRA = 'pip install -e ".[scale]"'


def require(module: str, what: str):
    """Import ``module`` (a package of the scale extra), or raise a one-line ConvscopeError
    naming ``what`` needs it and the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConvscopeError(f"{what} needs {module.split('.')[0]}: install the scale extra ({SCALE_EXTRA})") from None
