"""Writing the user's files: checked up front, written atomically, never over an existing file
unless --overwrite is given; and the small picture compositions the commands share (titles, rows)."""

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from engine.errors import ConvscopeError


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


def check_array_output(path: Optional[Path], overwrite: bool = False) -> Optional[Path]:
    """Check a --save-array path up front (a .npy file that may be written)."""
    return None if path is None else check_output(path, overwrite, suffixes={".npy"})


def save_array(path: Optional[Path], array: np.ndarray, overwrite: bool = False) -> None:
    """Write an array with ``np.save``, atomically (nothing when ``path`` is None)."""
    if path is not None:
        check_array_output(path, overwrite)
        write_output(path, lambda file: np.save(file, np.asarray(array)), overwrite)


def write_text(path: Path, text: str, overwrite: bool = False) -> Path:
    return write_output(path, lambda file: file.write(text.encode("utf-8")), overwrite)


def output_prefix(out: Optional[Path], default: str) -> Path:
    """--out as a prefix: 'runs/koala' -> runs/koala.png, runs/koala_diff.png, ... (a suffix is dropped)."""
    prefix = Path(out) if out is not None else Path(default)
    return prefix.with_suffix("") if prefix.suffix.lower() in IMAGE_SUFFIXES else prefix


