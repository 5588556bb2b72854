"""Read an untrusted HDF5 file in a child process with time limits (see ``engine/h5_reader.py``).

libhdf5 trusts a file's metadata: a flipped byte can make it loop forever or crash, and a crafted
file can make it read other files (external links, external raw storage, virtual datasets). So
this process never opens the file itself. ``IsolatedH5(path, label)`` asks the reader fork server
(started on first use, ``python -I h5_reader.py --serve``, one per process, gone when this process
exits) for a reader of that one file. The reader walks the whole file, refuses anything that would
leave it, and answers with a manifest: every group and dataset with its attributes, shape, dtype
and stored size. ``Node`` answers ``in``, ``[]`` and ``.attrs`` from it, so a dataset's shape and
dtype are known before a value is read; ``Node.read()`` then has the reader write the values as
float32 into memory shared with this process (a memfd; a stream over the socket where there is
no memfd).

A fork server rather than a fresh interpreter per file: starting Python and importing h5py takes
0.2-0.8 s, forking a server that has done so takes milliseconds (``benchmarks/README.md``).

Time limits: ``START_SECONDS`` to start the server (not the file's fault); ``INSPECT_SECONDS``
for the whole metadata walk (a sound Keras file takes milliseconds); per slab of data,
``INSPECT_SECONDS`` plus one second per ``BYTES_PER_SECOND`` bytes. Past a limit, or when the
reader dies, it is killed and a one-line ``ConvscopeError`` names the file. POSIX only.
"""

import atexit
import importlib.util
import json
import mmap
import os
import pathlib
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np

from engine.errors import ConvscopeError

START_SECONDS = 60.0
INSPECT_SECONDS = 5.0
BYTES_PER_SECOND = 20e6
MAX_LINE = (64 << 20) + (1 << 20)
SLAB_BYTES = 16 << 20  # as h5_reader.SLAB_BYTES: about this much is read between two messages
_READER = pathlib.Path(__file__).with_name("h5_reader.py")
_DAMAGED = "re-download or re-save it"


class Attribute:
    """An attribute's value: ``shape`` (None for an empty one), ``text`` and flat ``values``."""

    def __init__(self, entry):
        self.shape = entry["shape"]
        self.text = entry["text"]
        self.values = entry["values"]


class Node:
    """A group or dataset of the file, answered from the manifest (h5py-like ``in``, ``[]``,
    ``attrs``; ``kind`` is group, dataset or datatype). Datasets have ``shape`` (tuple, or None
    for an empty dataspace), ``dtype`` (numpy dtype, None when h5py cannot map it), ``stored``
    (bytes in the file) and ``read()``."""

    def __init__(self, file, path, entry):
        self.file, self.path, self.kind = file, path, entry["type"]
        self.attrs = {name: Attribute(value) for name, value in entry.get("attrs", {}).items()}
        if self.kind == "dataset":
            self.shape = None if entry["shape"] is None else tuple(entry["shape"])
            self.dtype = np.dtype(entry["dtype"]) if entry["kind"] else None
            self.stored = entry["stored"]

    def _join(self, name):
        return name if name.startswith("/") else self.path.rstrip("/") + "/" + name

    def __contains__(self, name):
        return self.file.resolve(self._join(name)) is not None

    def __getitem__(self, name):
        path = self.file.resolve(self._join(name))
        if path is None:
            raise KeyError(name)
        return Node(self.file, path, self.file.manifest[path])

    def read(self) -> np.ndarray:
        """The dataset as a float32 array of its shape (values cast, not checked)."""
        return self.file.read(self)


class IsolatedH5:
    """Context manager: the file's root ``Node``, from a reader killed on exit."""

    def __init__(self, path, label):
        self.path, self.label = pathlib.Path(path), label
        self._buffer = bytearray()
        self._sock = self._pid = None
        self._finished = False  # the reader has closed its end (exited)
        self._failed = False  # it missed a time limit: kill it
        self.manifest = None

    def __enter__(self) -> Node:
        try:
            self._sock, self._pid = _new_reader(self.path)
            message = self._message(time.monotonic() + INSPECT_SECONDS, "reading its metadata")
            if "refused" in message:
                raise ConvscopeError(f"{self.label} {message['refused']}")
            if "manifest" not in message:
                raise ConvscopeError(_damaged(self.label, message.get("failed", str(message))))
        except BaseException:
            self.close()
            raise
        self.manifest = message["manifest"]
        return Node(self, "/", self.manifest["/"])

    def __exit__(self, *exc):
        self.close()

    def close(self):
        """End the reader and wait (briefly) until it has released the file."""
        if self._sock is None:
            return
        if self._finished or self._reader_gone():
            pass
        elif self._failed:
            _kill(self._pid)
        else:
            self._sock.shutdown(socket.SHUT_WR)  # the reader's end of requests: it closes the file
        deadline = time.monotonic() + 1.0
        while not self._finished and select.select([self._sock], [], [], max(0.0, deadline - time.monotonic()))[0]:
            try:
                self._finished = self._sock.recv(1 << 20) == b""
            except OSError:
                self._finished = True
        if not self._finished:
            _kill(self._pid)
        self._sock.close()
        self._sock = None

    def resolve(self, path):
        """The manifest path of ``path`` after following aliases (soft links), or None."""
        for _ in range(32):  # libhdf5 itself allows 16 nested soft links
            parts = [p for p in path.split("/") if p not in ("", ".")]
            current = "/"
            for i, part in enumerate(parts):
                candidate = current.rstrip("/") + "/" + part
                entry = self.manifest.get(candidate)
                if entry is None:
                    return None
                if entry["type"] == "alias":
                    target = entry["target"]
                    base = target if target.startswith("/") else current.rstrip("/") + "/" + target
                    path = "/".join([base, *parts[i + 1:]])
                    break
                current = candidate
            else:
                return current
        return None

    def read(self, node) -> np.ndarray:
        if hasattr(os, "memfd_create"):
            return self._read_shared(node)
        out = np.empty(node.shape, np.float32)
        view = memoryview(out.reshape(-1)).cast("B")
        done = 0
        self._sock.sendall(json.dumps({"read": node.path}).encode() + b"\n")
        what = f"reading dataset '{node.path}'"
        while True:
            message = self._message(time.monotonic() + INSPECT_SECONDS, what)
            if "done" in message:
                break
            if "failed" in message:
                raise ConvscopeError(f"{self.label}: dataset '{node.path}' cannot be read "
                                     f"({message['failed']}); the file is damaged, {_DAMAGED}")
            size = message["slab"]
            if done + size > len(view):
                raise ConvscopeError(f"{self.label}: the HDF5 reader sent more data than '{node.path}' holds")
            deadline = time.monotonic() + INSPECT_SECONDS + size / BYTES_PER_SECOND
            self._read_into(view[done:done + size], deadline, what)
            done += size
        if done != len(view):
            raise ConvscopeError(f"{self.label}: dataset '{node.path}' gave {done} of {len(view)} bytes")
        return out

    def _read_shared(self, node) -> np.ndarray:
        """``read`` without copies: the reader writes the values into memory shared with us (a
        memfd it receives with the request); only slab sizes come over the socket."""
        nbytes = 4 * int(np.prod(node.shape, dtype=np.int64))
        fd = os.memfd_create("convscope-weights", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, max(nbytes, 1))
            shared = mmap.mmap(fd, max(nbytes, 1))
            request = json.dumps({"read": node.path, "shared": True, "nbytes": nbytes}).encode() + b"\n"
            socket.send_fds(self._sock, [request], [fd])
        finally:
            os.close(fd)
        what = f"reading dataset '{node.path}'"
        done = 0
        slab_seconds = INSPECT_SECONDS + min(nbytes, SLAB_BYTES) / BYTES_PER_SECOND
        while True:
            message = self._message(time.monotonic() + slab_seconds, what)
            if "done" in message:
                break
            if "failed" in message:
                raise ConvscopeError(f"{self.label}: dataset '{node.path}' cannot be read "
                                     f"({message['failed']}); the file is damaged, {_DAMAGED}")
            done += message["slab"]
        if done != nbytes:
            raise ConvscopeError(f"{self.label}: dataset '{node.path}' gave {done} of {nbytes} bytes")
        return np.frombuffer(shared, np.float32, count=nbytes // 4).reshape(node.shape)

    # ---- the socket -------------------------------------------------------------------------

    def _message(self, deadline, what):
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[:end + 1]
                return json.loads(line)
            if len(self._buffer) > MAX_LINE:
                raise ConvscopeError(f"{self.label}: the HDF5 reader's answer is too long")
            self._wait(deadline, what)
            data = self._sock.recv(1 << 20)
            if not data:
                self._died(what)
            self._buffer += data

    def _read_into(self, view, deadline, what):
        taken = min(len(self._buffer), len(view))
        view[:taken] = self._buffer[:taken]
        del self._buffer[:taken]
        done = taken
        while done < len(view):
            self._wait(deadline, what)
            n = self._sock.recv_into(view[done:])
            if n == 0:
                self._died(what)
            done += n

    def _wait(self, deadline, what):
        remaining = deadline - time.monotonic()
        if remaining > 0 and select.select([self._sock], [], [], remaining)[0]:
            return
        self._failed = True
        limit = f"{INSPECT_SECONDS:g} s" if what == "reading its metadata" else "its time limit"
        raise ConvscopeError(f"{self.label} is damaged: the HDF5 library did not finish {what} within "
                             f"{limit}; {_DAMAGED}")

    def _died(self, what):
        self._finished = True
        raise ConvscopeError(f"{self.label} is damaged: the HDF5 library crashed while {what}; {_DAMAGED}")

    def _reader_gone(self):
        """True when the reader has closed its end (so its pid may already be reused)."""
        try:
            return self._sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True


def _kill(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _damaged(label, reason):
    reason = " ".join(str(reason).split())
    sizes = re.search(r"truncated file: eof = (\d+).*stored_eof = (\d+)", reason)
    if sizes:
        return (f"{label} is truncated ({int(sizes[1]):,} of {int(sizes[2]):,} bytes; "
                "was a download or copy interrupted?)")
    return f"{label} is damaged or truncated and cannot be read ({reason})"


# ---- the fork server --------------------------------------------------------------------------


class _ForkServer:
    """``python -I h5_reader.py --serve``: forks a reader per file; ends when we close its socket."""

    def __init__(self):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-I", str(_READER), "--serve", str(theirs.fileno()), json.dumps(_package_dirs())],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, env=env)
        except OSError as exc:
            ours.close()
            raise ConvscopeError(f"cannot start the HDF5 reader ({sys.executable}: {exc.strerror or exc})") from exc
        finally:
            theirs.close()
        self.control = ours
        answer = self._answer(START_SECONDS)
        if not answer.get("ready"):
            self.close()
            raise ConvscopeError(f"cannot start the HDF5 reader: {answer.get('failed', answer)}")

    def reader(self, path):
        """(socket, pid) of a fresh reader of ``path``."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        request = {"path": os.fspath(path), "inspect_seconds": INSPECT_SECONDS,
                   "bytes_per_second": BYTES_PER_SECOND}
        try:
            socket.send_fds(self.control, [json.dumps(request).encode()], [theirs.fileno()])
            return ours, self._answer(START_SECONDS)["pid"]
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()

    def _answer(self, seconds):
        if not select.select([self.control], [], [], seconds)[0]:
            self.close()
            raise ConvscopeError(f"the HDF5 reader did not answer within {seconds:g} s (is the machine overloaded?)")
        data = self.control.recv(1 << 16)
        if not data:
            self.close()
            raise ConvscopeError("the HDF5 reader process ended unexpectedly; try again")
        return json.loads(data)

    def alive(self):
        return self.process.poll() is None

    def close(self):
        self.control.close()
        try:
            self.process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


_lock = threading.Lock()
_servers = []  # at most one running _ForkServer


def _new_reader(path):
    """(socket, pid) of a fresh reader of ``path``, (re)starting the fork server when needed."""
    with _lock:
        for attempt in (1, 2):
            if _servers and not _servers[0].alive():
                _servers.pop().close()
            if not _servers:
                _servers.append(_ForkServer())
            try:
                return _servers[0].reader(path)
            except (BrokenPipeError, ConnectionResetError):  # it ended since: start another, once
                _servers.pop().close()
                if attempt == 2:
                    raise ConvscopeError("the HDF5 reader process keeps ending; try again") from None


@atexit.register
def _stop_server():
    with _lock:
        while _servers:
            _servers.pop().close()


def _package_dirs():
    """The folders this interpreter finds h5py and NumPy in, for the ``-I`` (isolated) server."""
    dirs = []
    for name in ("h5py", "numpy"):
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin:
            folder = str(pathlib.Path(spec.origin).parent.parent)
            if folder not in dirs:
                dirs.append(folder)
    return dirs
