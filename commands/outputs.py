"""Writing the user's files: checked up front, written atomically, never over an existing file
unless --overwrite is given; and the small picture compositions the commands share (titles, rows)."""

import contextlib
import glob
import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from engine.errors import ConvscopeError


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"}


def check_output(path: Path, overwrite: bool = False, suffixes=IMAGE_SUFFIXES) -> Path:
    """Check up front (before any long computation) that ``path`` can be written. The one rule
    for folders: those the path needs are created when the file is written (never before)."""
    path = Path(path)
    if path.is_dir():
        raise ConvscopeError(f"{path}: is a directory; give a file name")
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise ConvscopeError(
            f"{path}: unsupported output type '{path.suffix}' (use {', '.join(sorted(suffixes))})"
        )
    parent = path.absolute().parent
    existing = next(folder for folder in (parent, *parent.parents) if folder.exists())
    if not existing.is_dir():
        raise ConvscopeError(f"{path}: {existing} is a file, not a folder")
    if path.exists() and not overwrite:
        raise ConvscopeError(f"{path}: already exists (pass --overwrite to replace it)")
    if not os.access(existing, os.W_OK):
        raise ConvscopeError(f"{path}: folder {existing} is not writable")
    return path


def write_output(path: Path, write: Callable, overwrite: bool = False) -> Path:
    """Write a file atomically: ``write(binary_file)`` fills a temporary file in the same folder
    (``.NAME.PID.xxxx.part``; stale ones from killed runs are removed first), which then replaces
    ``path`` in one step. Without ``overwrite`` an existing file is never
    replaced, even one created meanwhile (hard link, which fails if the name exists). On any
    failure, or Ctrl-C, the temporary file is removed and ``path`` is untouched.
    """
    path = check_output(path, overwrite, suffixes=None)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_parts(path)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".part", dir=path.parent)
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


STALE_PART_SECONDS = 3600.0


def remove_stale_parts(path: Path) -> None:
    """Remove the temporary files (``.NAME.PID.xxxx.part``) that earlier writes of ``path`` left
    when they were killed: those whose process is gone, and any older than STALE_PART_SECONDS."""
    for part in Path(path).parent.glob(f".{glob.escape(Path(path).name)}.*.part"):
        pid = part.name[len(Path(path).name) + 2:].split(".", 1)[0]
        try:
            old = time.time() - part.stat().st_mtime > STALE_PART_SECONDS
            if old or (pid.isdigit() and not _running(int(pid))):
                part.unlink()
        except OSError:
            pass  # gone meanwhile, or not ours to remove


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


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


