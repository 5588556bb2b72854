"""The feature cache of the image-folder commands.

Dataset commands (neighbors, embed, patches) read a folder recursively. Each per-image array
they need (features of a layer, channel maxima, small pixel copies, thumbnails) is kept on disk,
one .npy per image, in a folder named by a hash of everything the array depends on: the weights
file's full contents (hashed once and remembered in ``weights-digests.json`` by path, size and
mtime), the layer, the pooling, the input size, and the image file's contents. A second call on
the same folder runs no forward pass; a changed image or weights file is recomputed (its hash
changes), and so is an entry that is damaged or of another shape or type than the array it
stands for. Files are written atomically and read without pickles.

The cache lives in ``--cache-dir``, else $XDG_CACHE_HOME/convscope, else ~/.cache/convscope;
deleting that folder clears it, and ``--no-cache`` neither reads nor writes it. For folders of
many thousands of images, ``features --store`` (a Zarr store filled on Dask) replaces it.
"""

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import typer

from engine.errors import ConvscopeError
from engine.images import load_image
from commands.common import one_line, progress


CACHE_VERSION = 2  # 2: weights keyed by their full contents
WEIGHTS_MEMO = "weights-digests.json"
PIXEL_SIDE = 32  # pixel space for neighbours: the images at 32 x 32, RGB values in [0, 1]


def warn(message: str) -> None:
    typer.echo(f"warning: {one_line(message)}", err=True)


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
    from engine.scale.digest import file_digest as digest

    return digest(path)


def weights_identity(path: Path, root: Optional[Path]) -> str:
    """Hash of a weights file's whole contents, remembered in ``root``'s memo (path, size, mtime)
    so that a large file is read once; ``root`` None (no cache): not needed, not computed."""
    from engine.scale.digest import remembered_digest

    return "" if root is None else remembered_digest(path, Path(root) / WEIGHTS_MEMO)


class FeatureCache:
    """Per-image arrays on disk: ``<root>/<hash of what>/<image hash>.npy``; ``root`` None: off."""

    def __init__(self, root: Optional[Path], *what):
        self.folder = None if root is None else Path(root) / _blake(repr((CACHE_VERSION, *what)).encode())
        self.failed = False

    def get(self, digest: str, shape=None, dtype=None) -> Optional[np.ndarray]:
        """The entry, or None when it is missing, damaged, or not of ``shape`` and ``dtype``."""
        if self.folder is None:
            return None
        try:
            array = np.load(self.folder / f"{digest}.npy", allow_pickle=False)
        except (OSError, ValueError, EOFError):  # missing or damaged: compute it again
            return None
        if (shape is not None and array.shape != tuple(shape)) or (dtype is not None and array.dtype != np.dtype(dtype)):
            return None
        return array

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
    (width, height) to (B,) + ``shape`` of ``dtype``; results live in ``cache``."""

    def __init__(self, cache: FeatureCache, size, compute: Callable, shape, dtype):
        self.cache, self.size, self.compute = cache, (int(size[0]), int(size[1])), compute
        self.shape, self.dtype = tuple(int(v) for v in shape), np.dtype(dtype)


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
            results[name][index] = item.cache.get(digests[index], item.shape, item.dtype)
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


def cache_root(cache_dir: Optional[Path], no_cache: bool) -> Optional[Path]:
    return None if no_cache else (cache_dir if cache_dir is not None else default_cache_dir())


def feature_source(model, root, layer: str, pooling: str, hw, batch: int) -> PerImage:
    from engine.viz.dataset import image_features

    shape = model.output_shapes(tuple(hw), upto=model.layer_index(layer))[-1]
    width = shape[-1] if len(shape) == 1 or pooling == "avg" else int(np.prod(shape))
    cache = FeatureCache(root, "features", weights_identity(model.path, root), layer, pooling, tuple(hw))
    return PerImage(cache, (hw[1], hw[0]), lambda images: image_features(model, images, layer, pooling, batch),
                    (width,), np.float32)


def maxima_source(model, root, layer: str, hw, batch: int) -> PerImage:
    """Per image, each channel's largest value in a spatial layer and where it is, packed as one
    (3, C) float64 array (value, row, column); ``unpack_maxima`` undoes it."""
    from engine.viz.dataset import image_channel_maxima

    def maxima(images):  # (B, 3, C)
        values, positions = image_channel_maxima(model, images, layer, batch)
        return np.concatenate([values[:, None, :].astype(np.float64), positions.transpose(0, 2, 1).astype(np.float64)], axis=1)

    channels = model.output_shapes(tuple(hw), upto=model.layer_index(layer))[-1][-1]
    cache = FeatureCache(root, "channel-maxima", weights_identity(model.path, root), layer, tuple(hw))
    return PerImage(cache, (hw[1], hw[0]), maxima, (3, channels), np.float64)


def unpack_maxima(packed: np.ndarray):
    """(values (N, C), positions (N, C, 2) int64 (row, column)) from ``maxima_source``'s (N, 3, C)."""
    return packed[:, 0, :], packed[:, 1:, :].transpose(0, 2, 1).astype(np.int64)


def picture_source(root, side: int) -> PerImage:
    """The images themselves at side x side (uint8): pixel vectors and thumbnails."""
    return PerImage(FeatureCache(root, "pixels", side), (side, side), lambda images: images, (side, side, 3), np.uint8)
