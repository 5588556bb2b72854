"""The feature store: one Zarr group holding a layer's features for every image of a folder.

Layout (N rows, one per image file, in the order first seen; R = ``rows_per_chunk``)::

    paths     (N,)        str      absolute path of the image file
    bytes     (N,)        int64    file size when read
    mtime_ns  (N,)        int64    modification time when read
    digest    (N, 16)     uint8    blake2b-128 of the file's contents (zeros until read)
    image_hw  (N, 2)      int32    the image's own (height, width) before resizing
    status    (N,)        uint8    PENDING, DONE, UNREADABLE, GONE (file no longer listed), STALE
    pooled    (N, C)      float32  the layer's output averaged over positions (dense: as it is)
    spatial   (N, h, w, c) float32 the layer's output per position (only in a ``spatial`` store)

Every array is chunked by R rows (pooled and spatial blosc-zstd compressed with byte shuffle), so
a row chunk is a unit of work with one owner at a time: whoever writes any row of chunk k holds
the POSIX file lock ``<store>/.locks/chunk-k`` and rereads the status under it, so two runs (or a
retried task) never compute an image twice and never interleave writes to a chunk. Listing the
folder, appending rows and resizing happen under ``<store>/.locks/store``. Zarr writes each chunk
file atomically (temporary file, then rename), so a killed writer leaves the old chunk or the new
one, and rows it had not marked DONE are computed again. The store must be on a file system that
every worker sees and that honours ``flock`` (local disks, NFS v4).

The group's attributes name what the features are of: the weights file's content digest, the
layer, the network input (height, width), the feature shapes and R; a run with another
configuration on the same store is refused.
"""

import contextlib
import fcntl
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from engine.errors import ConvscopeError
from engine.scale import require
from engine.scale.digest import DIGEST_BYTES, stat_key

FORMAT = "convscope-features"
VERSION = 1
PENDING, DONE, UNREADABLE, GONE, STALE = 0, 1, 2, 3, 4
MANIFEST = ("paths", "bytes", "mtime_ns", "digest", "image_hw", "status")


@dataclass(frozen=True)
class StoreSpec:
    """What a store's features are: ``pooled_shape`` (C,); ``spatial_shape`` (h, w, c) or None."""

    weights_digest: str
    weights_name: str
    layer: str
    input_hw: tuple
    pooled_shape: tuple
    spatial_shape: Optional[tuple]
    rows_per_chunk: int = 256

    def attrs(self) -> dict:
        return {
            "format": FORMAT, "version": VERSION, "weights_digest": self.weights_digest,
            "weights_name": self.weights_name, "layer": self.layer, "input_hw": list(self.input_hw),
            "pooled_shape": list(self.pooled_shape),
            "spatial_shape": None if self.spatial_shape is None else list(self.spatial_shape),
            "rows_per_chunk": int(self.rows_per_chunk),
        }

    @classmethod
    def from_attrs(cls, attrs: dict) -> "StoreSpec":
        spatial = attrs.get("spatial_shape")
        return cls(
            attrs["weights_digest"], attrs.get("weights_name", ""), attrs["layer"], tuple(attrs["input_hw"]),
            tuple(attrs["pooled_shape"]), None if spatial is None else tuple(spatial), int(attrs["rows_per_chunk"]),
        )


@dataclass
class Work:
    """Rows of one chunk that need reading: ``rows`` (absolute row numbers, ascending)."""

    chunk: int
    rows: list


class FeatureStore:
    """A feature store at ``path`` (a folder). ``open``/``create_or_open`` check what it holds."""

    def __init__(self, path, spec: StoreSpec):
        self.path, self.spec = Path(path), spec

    # ----------------------------------------------------------------------------- opening

    @classmethod
    def open(cls, path) -> "FeatureStore":
        """An existing store, read as it is."""
        zarr = require("zarr", "the feature store")
        path = Path(path)
        if not (path / "zarr.json").is_file():
            raise ConvscopeError(f"{path}: no feature store there (make one with `features --store {path}`)")
        try:
            attrs = dict(zarr.open_group(str(path), mode="r").attrs)
        except Exception as exc:  # zarr raises many kinds on damaged metadata
            raise ConvscopeError(f"{path}: cannot read the feature store ({exc}); remove it and extract again") from None
        if attrs.get("format") != FORMAT or attrs.get("version") != VERSION:
            raise ConvscopeError(f"{path}: not a convscope feature store of version {VERSION}")
        return cls(path, StoreSpec.from_attrs(attrs))

    @classmethod
    def create_or_open(cls, path, spec: StoreSpec) -> "FeatureStore":
        """The store at ``path``, created empty for ``spec`` if absent; an existing store must
        hold the same weights, layer and input size (and spatial features if ``spec`` asks)."""
        zarr = require("zarr", "the feature store")
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise ConvscopeError(f"{path}: is a file; --store names a folder (a Zarr store)")
        path.mkdir(parents=True, exist_ok=True)
        store = cls(path, spec)
        with store.lock("store"):
            if not (path / "zarr.json").is_file():
                store._create(zarr)
                return store
        found = cls.open(path)
        have, want = found.spec, spec
        for what, a, b in (("weights", have.weights_digest, want.weights_digest), ("layer", have.layer, want.layer),
                           ("input size", tuple(have.input_hw), tuple(want.input_hw))):
            if a != b:
                raise ConvscopeError(
                    f"{path}: the store holds features of another {what} ({a} there, {b} asked); "
                    f"give another --store or remove this one"
                )
        if want.spatial_shape is not None and have.spatial_shape is None:
            raise ConvscopeError(f"{path}: the store has no per-position features; give another --store for --spatial")
        return found

    def _create(self, zarr) -> None:
        from zarr.codecs import BloscCodec

        r = int(self.spec.rows_per_chunk)
        group = zarr.open_group(str(self.path), mode="w", attributes=self.spec.attrs())
        squeeze = BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")
        group.create_array("paths", shape=(0,), chunks=(r,), dtype=str)
        for name in ("bytes", "mtime_ns"):
            group.create_array(name, shape=(0,), chunks=(r,), dtype="int64", fill_value=-1)
        group.create_array("digest", shape=(0, DIGEST_BYTES), chunks=(r, DIGEST_BYTES), dtype="uint8", fill_value=0)
        group.create_array("image_hw", shape=(0, 2), chunks=(r, 2), dtype="int32", fill_value=0)
        group.create_array("status", shape=(0,), chunks=(r,), dtype="uint8", fill_value=PENDING)
        group.create_array("pooled", shape=(0,) + tuple(self.spec.pooled_shape), chunks=(r,) + tuple(self.spec.pooled_shape),
                           dtype="float32", fill_value=0.0, compressors=squeeze)
        if self.spec.spatial_shape is not None:
            shape = tuple(self.spec.spatial_shape)
            group.create_array("spatial", shape=(0,) + shape, chunks=(r,) + shape, dtype="float32", fill_value=0.0,
                               compressors=squeeze)

    def group(self, mode: str = "r"):
        """The Zarr group, opened now (its arrays' shapes are read fresh)."""
        zarr = require("zarr", "the feature store")
        return zarr.open_group(str(self.path), mode=mode)

    @property
    def arrays(self) -> tuple:
        return MANIFEST + ("pooled",) + (("spatial",) if self.spec.spatial_shape is not None else ())

    # ----------------------------------------------------------------------------- locking

    @contextlib.contextmanager
    def lock(self, name: str):
        """Hold the exclusive POSIX lock ``<store>/.locks/<name>`` (released when the holder dies)."""
        folder = self.path / ".locks"
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / name, "a+b") as file:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(file.fileno(), fcntl.LOCK_UN)

    def chunk_rows(self, chunk: int, n: int) -> tuple[int, int]:
        r = self.spec.rows_per_chunk
        return chunk * r, min(n, (chunk + 1) * r)

    def write_chunk(self, group, chunk: int, rows, values: dict) -> None:
        """Set ``values[name][i]`` at row ``rows[i]`` of each named array, all rows in ``chunk``,
        one read-modify-write of the chunk's slice per array. The caller holds the chunk's lock."""
        n = group["status"].shape[0]
        lo, hi = self.chunk_rows(chunk, n)
        at = np.asarray(rows, dtype=np.int64) - lo
        for name, new in values.items():
            array = group[name]
            block = array[lo:hi]
            block[at] = np.asarray(new, dtype=block.dtype) if name != "paths" else np.asarray(new, dtype=object)
            array[lo:hi] = block

    # ----------------------------------------------------------------------------- planning

    def sync(self, files) -> tuple[list, list]:
        """Match the store to the image files ``files`` (the folder's listing): a new path gets a
        new row (PENDING); a known one whose size or mtime changed turns STALE (its digest decides
        whether it is read again); rows of paths no longer listed turn GONE. Returns (the work:
        ``Work`` per chunk with PENDING or STALE rows among ``files``, the row of each file)."""
        stats = []
        for path in files:
            try:
                stats.append(stat_key(path))
            except OSError:
                stats.append(None)
        with self.lock("store"):
            group = self.group("r+")
            n = group["status"].shape[0]
            old_paths = list(group["paths"][:]) if n else []
            size, mtime, status = (group[name][:] for name in ("bytes", "mtime_ns", "status"))
            index = {str(p): i for i, p in enumerate(old_paths)}
            changes, new, rows = {}, [], []
            for stat in stats:
                if stat is None:
                    rows.append(None)
                    continue
                key, b, m = stat
                row = index.get(key)
                if row is None:
                    row = n + len(new)
                    index[key] = row
                    new.append(stat)
                elif int(size[row]) != b or int(mtime[row]) != m or status[row] == GONE:
                    changes[row] = STALE if status[row] in (DONE, STALE, GONE) else PENDING
                rows.append(row)
            listed = {r for r in rows if r is not None}
            for row in range(n):
                if row not in listed and status[row] != GONE:
                    changes[row] = GONE
            if new:
                for name in self.arrays:
                    array = group[name]
                    array.resize((n + len(new),) + array.shape[1:])
            by_chunk = {}
            for row, value in changes.items():
                by_chunk.setdefault(row // self.spec.rows_per_chunk, {})[row] = value
            for offset, (key, b, m) in enumerate(new):
                by_chunk.setdefault((n + offset) // self.spec.rows_per_chunk, {})[n + offset] = (key, b, m)
            for chunk, updates in sorted(by_chunk.items()):
                with self.lock(f"chunk-{chunk}"):
                    fresh = [r for r in sorted(updates) if isinstance(updates[r], tuple)]
                    known = [r for r in sorted(updates) if not isinstance(updates[r], tuple)]
                    if fresh:
                        self.write_chunk(group, chunk, fresh, {
                            "paths": [updates[r][0] for r in fresh], "bytes": [updates[r][1] for r in fresh],
                            "mtime_ns": [updates[r][2] for r in fresh], "status": [PENDING] * len(fresh),
                        })
                    if known:
                        self.write_chunk(group, chunk, known, {"status": [updates[r] for r in known]})
            status = group["status"][:]
        todo = sorted(r for r in listed if status[r] in (PENDING, STALE))
        work = {}
        for row in todo:
            work.setdefault(row // self.spec.rows_per_chunk, []).append(row)
        return [Work(chunk, chunk_rows) for chunk, chunk_rows in sorted(work.items())], rows

    # ----------------------------------------------------------------------------- reading

    def manifest(self) -> dict:
        """{name: whole array} of the per-row bookkeeping (paths as str)."""
        group = self.group("r")
        out = {name: group[name][:] for name in MANIFEST}
        out["paths"] = np.asarray([str(p) for p in out["paths"]], dtype=object)
        return out

    def done_rows(self, files=None) -> np.ndarray:
        """Rows that hold features (DONE), ascending; ``files``: only those of these paths, in
        the order of ``files``."""
        info = self.manifest()
        if files is None:
            return np.flatnonzero(info["status"] == DONE)
        index = {p: i for i, p in enumerate(info["paths"])}
        rows = [index.get(str(Path(f).resolve())) for f in files]
        return np.asarray([r for r in rows if r is not None and info["status"][r] == DONE], dtype=np.int64)

    def read(self, name: str, rows) -> np.ndarray:
        """``name``'s values at ``rows`` (ascending row numbers), read chunk by chunk."""
        array = self.group("r")[name]
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == 0:
            return np.zeros((0,) + array.shape[1:], array.dtype)
        return array.oindex[rows] if hasattr(array, "oindex") else array[:][rows]

    def size_on_disk(self) -> int:
        return sum(os.path.getsize(os.path.join(d, f)) for d, _, names in os.walk(self.path) for f in names)
