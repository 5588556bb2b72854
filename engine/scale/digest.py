"""Content hashes: image files and weights files, by what they hold rather than where they are.

A digest is blake2b with 16 bytes (32 hex characters). Weights files are large (528 MiB for
VGG16 with its classifier), so a file's full digest is remembered in a small JSON file keyed by
(absolute path, size, modification time in ns): a file edited in place gets a new mtime and is
hashed again; an untouched one is hashed once per memo file.
"""

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Optional

DIGEST_BYTES = 16
_READ = 1 << 20


def bytes_digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=DIGEST_BYTES).hexdigest()


def file_digest(path) -> str:
    """Hex blake2b-128 of a file's whole contents."""
    digest = hashlib.blake2b(digest_size=DIGEST_BYTES)
    with open(path, "rb") as file:
        while chunk := file.read(_READ):
            digest.update(chunk)
    return digest.hexdigest()


def stat_key(path) -> tuple[str, int, int]:
    """(absolute path, size in bytes, mtime in ns): what the memo trusts to stand for the content."""
    info = os.stat(path)
    return str(Path(path).resolve()), int(info.st_size), int(info.st_mtime_ns)


def remembered_digest(path, memo: Optional[Path]) -> str:
    """``file_digest(path)``, read from the JSON memo file ``memo`` when its entry for this path
    has the same size and mtime, else computed and recorded there (atomically; a memo that cannot
    be read or written is ignored). ``memo`` None: always computed."""
    key, size, mtime = stat_key(path)
    table = {}
    if memo is not None:
        try:
            table = json.loads(Path(memo).read_text())
            entry = table.get(key)
            if isinstance(entry, list) and entry[:2] == [size, mtime] and isinstance(entry[2], str):
                return entry[2]
        except (OSError, ValueError, AttributeError, IndexError):
            table = {}
    value = file_digest(path)
    if memo is not None and isinstance(table, dict):
        table[key] = [size, mtime, value]
        temp = None
        try:
            Path(memo).parent.mkdir(parents=True, exist_ok=True)
            fd, temp = tempfile.mkstemp(prefix=".digests.", suffix=".part", dir=Path(memo).parent)
            with os.fdopen(fd, "w") as file:
                json.dump(table, file)
            os.replace(temp, memo)
        except OSError:  # a read-only or full cache: the digest is still right, just not remembered
            if temp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(temp)
    return value
