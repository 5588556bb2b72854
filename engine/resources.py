"""Find the VGG16 weight file and the ImageNet class index where Keras users already keep them.

Resolution order: an explicit path, then an environment variable (``CONVSCOPE_WEIGHTS``,
``CONVSCOPE_CLASS_INDEX``), then the Keras cache (``$KERAS_HOME/models/`` or
``~/.keras/models/``), and only then, if the caller allows it, a download from the URL Keras itself
uses. Downloads go to a temporary file in the cache folder, stop at the published size (nothing
past it is written), are checked against that size and the md5, and are then moved into place with ``os.replace``, so an interrupted or corrupt
download leaves nothing behind. Nothing here prints: progress goes to a callback, questions to a
``confirm(prompt) -> bool`` callback, problems to a one-line ``ConvscopeError``.
"""

import hashlib
import json
import os
import pathlib
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass

from engine.errors import ConvscopeError

WEIGHTS_ENV = "CONVSCOPE_WEIGHTS"
CLASS_INDEX_ENV = "CONVSCOPE_CLASS_INDEX"
NOTOP_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
TOP_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels.h5"
CLASS_INDEX_FILE = "imagenet_class_index.json"
_WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/vgg16/"


@dataclass(frozen=True)
class RemoteFile:
    url: str
    size: int | None
    md5: str


# The files Keras downloads, with their published sizes and md5s (tests point the URLs elsewhere).
REMOTE_FILES = {
    NOTOP_FILE: RemoteFile(_WEIGHTS_URL + NOTOP_FILE, 58_889_256, "6d6bbae143d832006294945121d1f1fc"),
    TOP_FILE: RemoteFile(_WEIGHTS_URL + TOP_FILE, 553_467_096, "64373286793e3c8b2b4e3219cbf3544b"),
    CLASS_INDEX_FILE: RemoteFile(
        "https://storage.googleapis.com/download.tensorflow.org/data/imagenet_class_index.json",
        35_363, "c2c37ea517e94d9795004a39431a14cb",
    ),
}


def available_memory() -> int:
    """Bytes of memory this machine could give now (MemAvailable; else all physical memory)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return 1 << 62


def keras_cache_dir() -> pathlib.Path:
    """Where Keras caches downloaded files: ``$KERAS_HOME/models`` or ``~/.keras/models``."""
    home = os.environ.get("KERAS_HOME")
    return pathlib.Path(home).expanduser() / "models" if home else pathlib.Path.home() / ".keras" / "models"


def _existing(path, what) -> pathlib.Path:
    path = pathlib.Path(path).expanduser()
    if not path.is_file():
        problem = "is not a file" if path.exists() else "does not exist"
        raise ConvscopeError(f"{what} '{path}' {problem}")
    return path


def resolve_weights(path=None, need_top=False, download=None, progress=None) -> pathlib.Path:
    """The VGG16 weight file to use.

    ``path`` (explicit) wins, then ``$CONVSCOPE_WEIGHTS``, then the Keras cache: with ``need_top``
    the full file only, otherwise the notop file, falling back to the full one. If none exists and
    ``download`` is True or a ``confirm(prompt) -> bool`` that says yes, the official file is
    downloaded into the Keras cache (``progress(done_bytes, total_bytes)`` is called as it goes).
    """
    if path is not None:
        return _existing(path, "weights file")
    if os.environ.get(WEIGHTS_ENV):
        return _existing(os.environ[WEIGHTS_ENV], f"weights file (from ${WEIGHTS_ENV})")
    cache = keras_cache_dir()
    candidates = [TOP_FILE] if need_top else [NOTOP_FILE, TOP_FILE]
    for name in candidates:
        if (cache / name).is_file():
            return cache / name
    name = candidates[0]
    hint = f"put {name} in {cache}, pass --weights, or set {WEIGHTS_ENV}"
    if not _agreed(download, f"Download {name} ({_megabytes(REMOTE_FILES[name].size)}) from "
                             f"{REMOTE_FILES[name].url} into {cache}?"):
        raise ConvscopeError(f"VGG16 weights not found: {hint}")
    return download_file(REMOTE_FILES[name], cache / name, progress, hint=hint)


def load_class_names(path=None, download=None, report=None) -> list[str] | None:
    """The 1000 ImageNet class names (index order) from Keras' ``imagenet_class_index.json``.

    ``path`` (explicit) wins, then ``$CONVSCOPE_CLASS_INDEX``, then the Keras cache, then a download
    if ``download`` allows it. Returns None when no file is available (or the download fails), so
    callers can show class indices instead; a failed download is passed to ``report(message)``
    when given. A file that exists but is corrupt is an error.
    """
    if path is not None:
        found = _existing(path, "class index")
    elif os.environ.get(CLASS_INDEX_ENV):
        found = _existing(os.environ[CLASS_INDEX_ENV], f"class index (from ${CLASS_INDEX_ENV})")
    else:
        found = keras_cache_dir() / CLASS_INDEX_FILE
        if not found.is_file():
            remote = REMOTE_FILES[CLASS_INDEX_FILE]
            prompt = f"Download the ImageNet class names from {remote.url} into {found.parent}?"
            if not _agreed(download, prompt):
                return None
            try:
                found = download_file(remote, found)
            except ConvscopeError as exc:
                if report is not None:
                    report(f"no class names: {exc}")
                return None
    return parse_class_index(found)


def parse_class_index(path) -> list[str]:
    """Class names from a ``{"0": ["n01440764", "tench"], ...}`` file, checked for shape."""
    label = f"class index '{path}'"
    try:
        data = json.loads(pathlib.Path(path).read_bytes().decode("utf8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConvscopeError(f"{label} is not valid JSON ({str(exc).splitlines()[0]})") from exc
    except OSError as exc:
        raise ConvscopeError(f"{label} cannot be read ({exc.strerror or exc})") from exc
    expected = 'expected {"0": ["n01440764", "tench"], ...}'
    if not isinstance(data, dict) or not data:
        raise ConvscopeError(f"{label} is not a class index: {expected}")
    if sorted(data) != sorted(str(i) for i in range(len(data))):
        raise ConvscopeError(f"{label} keys are not the class indices 0..{len(data) - 1}: {expected}")
    names = []
    for i in range(len(data)):
        entry = data[str(i)]
        if not (isinstance(entry, list) and len(entry) == 2 and all(isinstance(v, str) for v in entry)):
            raise ConvscopeError(f"{label} entry {i} is {json.dumps(entry)[:60]}: {expected}")
        names.append(entry[1])
    return names


def _agreed(download, prompt) -> bool:
    if callable(download):
        return bool(download(prompt))
    return download is True


def _megabytes(size):
    return "size unknown" if size is None else f"{size / 1e6:.1f} MB"


def download_file(remote: RemoteFile, dest, progress=None, hint=None, chunk=1 << 20) -> pathlib.Path:
    """Download ``remote`` to ``dest`` atomically, verifying size and md5; returns ``dest``."""
    dest = pathlib.Path(dest)
    hint = hint or f"download it yourself from {remote.url} into {dest.parent}"
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    except OSError as exc:
        raise ConvscopeError(f"cannot write to {dest.parent} ({exc.strerror or exc}); {hint}") from exc
    digest, done = hashlib.md5(), 0
    try:
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(remote.url, timeout=30) as response:
            total = remote.size or int(response.headers.get("Content-Length") or 0) or None
            # Never write past the published size: ask for one byte more than is left, and stop there.
            while block := response.read(chunk if remote.size is None else min(chunk, remote.size - done + 1)):
                if remote.size is not None and done + len(block) > remote.size:
                    raise ConvscopeError(
                        f"download of {dest.name} is larger than the expected {remote.size} bytes "
                        f"(a different file?); {hint}"
                    )
                out.write(block)
                digest.update(block)
                done += len(block)
                if progress is not None:
                    progress(done, total)
        if remote.size is not None and done != remote.size:
            raise ConvscopeError(
                f"download of {dest.name} is {done} bytes, expected {remote.size} (interrupted?); {hint}"
            )
        if digest.hexdigest() != remote.md5:
            raise ConvscopeError(
                f"download of {dest.name} has md5 {digest.hexdigest()}, expected {remote.md5} "
                f"(corrupt or a different file); {hint}"
            )
        os.replace(tmp, dest)
    except ConvscopeError:
        _remove(tmp)
        raise
    except (OSError, urllib.error.URLError, ValueError) as exc:
        _remove(tmp)
        if isinstance(exc, urllib.error.HTTPError):
            reason = f"HTTP {exc.code} {exc.reason}"
        else:
            reason = " ".join(str(getattr(exc, "reason", None) or exc).split())
        raise ConvscopeError(f"could not download {dest.name} from {remote.url} ({reason}); {hint}") from exc
    except BaseException:  # KeyboardInterrupt: leave no partial file either
        _remove(tmp)
        raise
    return dest


def _remove(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
