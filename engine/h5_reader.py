"""The child-process half of ``engine.h5_isolated``: the only code that lets libhdf5 touch a file.

Run as a script (``python -I h5_reader.py --serve FD DIRS``), never imported by the engine, so it
needs only h5py and NumPy. Started once, it imports them and then serves as a fork server: for
each request on the control socket FD (a SOCK_SEQPACKET; the request carries the path, the time
limits and one end of a fresh socket) it forks a reader that handles that one file and exits.
Damaged HDF5 metadata can make libhdf5 loop forever or crash; that costs only the forked reader,
which stops itself with SIGALRM (default action: end the process, even inside C code) and which
the parent also kills at its own deadline. The server itself never opens a file.

Reader protocol, on its socket: one JSON object per line, raw bytes only where a line announced
them.

1. ``{"manifest": {path: entry}}`` — every object reachable from the root, found by walking hard
   links, with every attribute (decoded to JSON) and, for datasets, shape, dtype, storage layout,
   filters and stored bytes; or ``{"refused": clause}`` / ``{"failed": reason}`` and exit.
   Nothing outside the file is ever opened: external links, user-defined links, external raw
   storage, virtual datasets and filters that would load a plugin are refused while walking,
   before any data is read. A soft link is kept (``{"type": "alias", "target": path}``) only if
   it resolves to an object of this file; an object reached twice is an alias of its first path.
2. Then, for each ``{"read": path}`` line received: ``{"slab": n}`` + n bytes of float32 values
   in C order, repeated, then ``{"done": true}``; or ``{"failed": reason}``. A request with
   ``"shared": true`` comes with a memfd of ``nbytes`` (SCM_RIGHTS): the values are written into
   it and the slab lines carry no bytes. Slabs are whole chunks along axis 0, about
   ``SLAB_BYTES``, so memory stays small and each chunk is decoded once. Casting to float32
   happens here with overflow allowed: a value beyond float32 becomes inf, which the parent
   refuses.
"""

import json
import math
import os
import resource
import signal
import socket
import sys

MAX_OBJECTS = 100_000
MAX_ATTRIBUTE_BYTES = 16 << 20
MAX_MANIFEST_CHARS = 64 << 20
SLAB_BYTES = 16 << 20
# Address space a reader may add to what it had at fork: corrupt metadata can make libhdf5
# allocate without end (gigabytes in seconds), so memory is bounded as well as time.
HEADROOM_BYTES = 512 << 20
# Filters built into libhdf5 (deflate, shuffle, fletcher32, szip, nbit, scaleoffset) and h5py's
# own lzf: anything else would make libhdf5 search the plugin path and load a shared library.
BUILTIN_FILTERS = {1, 2, 3, 4, 5, 6, 32000}


class Refused(Exception):
    """The file asks for something convscope will not do (read another file, load a plugin)."""


def _limit_memory(extra_bytes=0):
    """Cap this process's address space at its size now + HEADROOM_BYTES + ``extra_bytes``
    (the soft limit only, so it can be raised again for the next dataset)."""
    try:
        with open("/proc/self/statm") as statm:
            size = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return  # no /proc (macOS): time limits only
    if not hasattr(_limit_memory, "base"):
        _limit_memory.base = size
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    soft = _limit_memory.base + HEADROOM_BYTES + int(extra_bytes)
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _send(out, message, raw=None):
    out.write(json.dumps(message).encode("ascii") + b"\n")
    if raw is not None:
        out.write(raw)
    out.flush()


def _text(value):
    return value.decode("utf8", "replace") if isinstance(value, bytes) else str(value)


def _attribute(h5py, np, obj, name):
    """An attribute as {"shape", "text", "values"} (values flat), sized before it is read."""
    attr_id = h5py.h5a.open(obj.id, name.encode("utf8", "surrogateescape"))
    try:
        shape = attr_id.shape or ()
        size = int(np.prod(shape, dtype=object)) * max(1, attr_id.dtype.itemsize)
    finally:
        attr_id.close()
    if size > MAX_ATTRIBUTE_BYTES:
        raise Refused(f"has an attribute '{_text(name)}' declaring {size:,} bytes "
                      f"(more than {MAX_ATTRIBUTE_BYTES >> 20} MiB; not a Keras file)")
    value = obj.attrs[name]
    if isinstance(value, h5py.Empty):
        return {"shape": None, "text": False, "values": []}
    array = np.asarray(value)
    flat = array.ravel()
    if array.dtype.kind in "SU" or (array.dtype.kind == "O" and all(isinstance(v, (str, bytes)) for v in flat)):
        return {"shape": list(array.shape), "text": True, "values": [_text(v) for v in flat]}
    if array.dtype.kind in "biuf":
        return {"shape": list(array.shape), "text": False, "values": flat.tolist()}
    return {"shape": list(array.shape), "text": False, "values": [], "unsupported": str(array.dtype)}


def _attributes(h5py, np, obj):
    return {_text(name): _attribute(h5py, np, obj, name) for name in obj.attrs.keys()}


def _dataset(h5py, np, path, ds):
    plist = ds.id.get_create_plist()
    layout = plist.get_layout()
    if layout == h5py.h5d.VIRTUAL:
        sources = sorted({vds.file_name for vds in ds.virtual_sources()})
        raise Refused(f"has a virtual dataset '{path}' whose data lives in other files "
                      f"({', '.join(sources)[:200]}); convscope reads only data stored inside the file itself")
    if plist.get_external_count():
        target = _text(plist.get_external(0)[0])
        raise Refused(f"has a dataset '{path}' whose data is stored in another file ('{target}'); "
                      "convscope reads only data stored inside the file itself")
    filters = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
    unknown = [f for f in filters if f not in BUILTIN_FILTERS]
    if unknown:
        raise Refused(f"has a dataset '{path}' that needs HDF5 filter {unknown[0]}, a plugin convscope "
                      "does not load (save the weights without it)")
    try:
        dtype, kind = ds.dtype.str, ds.dtype.kind
    except (TypeError, ValueError) as exc:
        dtype, kind = f"unsupported ({exc})", ""
    names = {h5py.h5d.CONTIGUOUS: "contiguous", h5py.h5d.CHUNKED: "chunked", h5py.h5d.COMPACT: "compact"}
    return {"type": "dataset", "shape": None if ds.shape is None else list(ds.shape), "dtype": dtype,
            "kind": kind, "layout": names.get(layout, str(layout)), "filters": filters,
            "chunks": None if ds.chunks is None else list(ds.chunks), "stored": ds.id.get_storage_size()}


def inspect(h5py, np, f):
    """{path: entry} for every object reachable from the root; raises Refused or h5py errors."""
    manifest = {"/": {"type": "group", "attrs": _attributes(h5py, np, f)}}
    seen = {h5py.h5o.get_info(f.id).addr: "/"}
    size = 0
    # h5py garbles exceptions raised inside its visitor, so the visitor only collects (and stops
    # past MAX_OBJECTS). Soft links are resolved only after every external link has been refused.
    links = []
    f.visititems_links(lambda name, link: links.append((name, link)) or len(links) > MAX_OBJECTS or None)
    if len(links) > MAX_OBJECTS:
        raise Refused(f"has more than {MAX_OBJECTS:,} objects (not a Keras weights file)")
    for name, link in sorted(links, key=lambda item: isinstance(item[1], h5py.SoftLink)):
        path = "/" + name
        if isinstance(link, h5py.SoftLink):
            try:  # libhdf5 resolves it, inside this file: no external link is left
                target = f.get(name)
            except (KeyError, RuntimeError, OSError) as exc:
                raise Refused(f"has a soft link '{path}' to '{_text(link.path)}' that does not resolve "
                              f"({_reason(exc)})") from None
            if target is None:
                raise Refused(f"has a soft link '{path}' to '{_text(link.path)}', which is not in the file")
            manifest[path] = {"type": "alias", "target": _text(link.path)}
            continue
        if not isinstance(link, h5py.HardLink):
            where = f" to '{_text(link.filename)}'" if isinstance(link, h5py.ExternalLink) else ""
            raise Refused(f"has an external link '{path}'{where}; convscope reads only data stored "
                          "inside the file itself")
        obj = f[name]
        address = h5py.h5o.get_info(obj.id).addr
        if address in seen:
            manifest[path] = {"type": "alias", "target": seen[address]}
            continue
        seen[address] = path
        if isinstance(obj, h5py.Dataset):
            entry = _dataset(h5py, np, path, obj)
        else:
            entry = {"type": "group" if isinstance(obj, h5py.Group) else "datatype"}
        entry["attrs"] = _attributes(h5py, np, obj)
        size += len(json.dumps(entry["attrs"]))
        if size > MAX_MANIFEST_CHARS:
            raise Refused(f"has more than {MAX_MANIFEST_CHARS >> 20} MiB of attributes (not a Keras file)")
        manifest[path] = entry
    return manifest


def stream(h5py, np, out, ds, bytes_per_second, base_seconds, target=None):
    """Send ``ds`` as float32 slabs (whole chunks along axis 0), then ``{"done": true}``; with
    ``target`` (a float32 array of ds's shape in memory shared with the parent) the slabs are
    written there and only their sizes are sent."""
    native = ds.dtype.newbyteorder("=")
    shape = ds.shape
    if not shape:
        value = np.asarray(ds[()], dtype=native)
        with np.errstate(over="ignore", invalid="ignore"):
            slab = value.astype(np.float32).reshape(())
        if target is not None:
            target[...] = slab
        _send(out, {"slab": 4}, None if target is not None else slab.tobytes())
    else:
        row_bytes = max(1, native.itemsize * int(np.prod(shape[1:], dtype=np.int64)))
        rows = max(1, SLAB_BYTES // row_bytes)
        if ds.chunks is not None:
            step = ds.chunks[0]
            rows = max(step, rows // step * step)
        chunk_bytes = native.itemsize * int(np.prod(ds.chunks or (1,), dtype=np.int64))
        shared = 0 if target is None else target.nbytes  # already mapped: counted in our size
        _limit_memory(shared + 3 * min(rows, shape[0]) * row_bytes + 2 * chunk_bytes)
        direct = target is not None and native == np.float32  # read straight into shared memory
        buffer = None if direct else np.empty((min(rows, shape[0]),) + tuple(shape[1:]), dtype=native)
        for start in range(0, shape[0], rows):
            stop = min(shape[0], start + rows)
            part = target[start:stop] if direct else buffer[: stop - start]
            signal.alarm(math.ceil(base_seconds + part.nbytes / bytes_per_second) + 1)
            ds.read_direct(part, np.s_[start:stop], np.s_[0:stop - start])
            with np.errstate(over="ignore", invalid="ignore"):
                if target is None:
                    slab = part.astype(np.float32, copy=False)
                elif not direct:
                    np.copyto(target[start:stop], part, casting="unsafe")
            signal.alarm(0)
            raw = None if target is not None else memoryview(slab).cast("B")
            _send(out, {"slab": 4 * part.size}, raw)
    _send(out, {"done": True})


def _reason(exc):
    return " ".join(str(exc).split()) or type(exc).__name__


def read_file(h5py, np, sock, request):
    """Serve one file on ``sock`` (the protocol above) until the parent closes its end; the file
    is closed before this returns, so the parent's end of file means the file is released."""
    out = sock.makefile("wb")
    _limit_memory()
    signal.alarm(math.ceil(request["inspect_seconds"]) + 1)
    f = None
    try:
        try:
            if not h5py.is_hdf5(request["path"]):
                _send(out, {"refused": "is not an HDF5 file (is it truncated or an HTML error page?)"})
                return
            # No file lock: this process only reads, and locks fail on some network file systems.
            f = h5py.File(request["path"], "r", locking=False)
            _send(out, {"manifest": inspect(h5py, np, f)})
        except Refused as exc:
            _send(out, {"refused": str(exc)})
            return
        except Exception as exc:  # any libhdf5 complaint: the parent words it as damage
            _send(out, {"failed": _reason(exc)})
            return
        signal.alarm(0)
        for read, fd in _requests(sock):
            try:
                _serve_read(h5py, np, out, f[read["read"]], request, fd, read.get("nbytes", 0))
            except Exception as exc:
                _send(out, {"failed": _reason(exc)})
    finally:
        if f is not None:
            f.close()


def _requests(sock):
    """(request, memfd or None) for each line the parent sends, until it closes its end; a
    request's memfd arrives with its first byte."""
    pending, fds = b"", []
    while True:
        data, received, _, _ = socket.recv_fds(sock, 1 << 16, 1)
        if not data:
            return
        fds += received
        pending += data
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            request = json.loads(line)
            yield request, (fds.pop(0) if request.get("shared") and fds else None)


def _serve_read(h5py, np, out, ds, request, fd, nbytes):
    """Stream one dataset, into the parent's shared memory ``fd`` when it sent one."""
    import mmap

    if fd is None:
        return stream(h5py, np, out, ds, request["bytes_per_second"], request["inspect_seconds"])
    try:
        _limit_memory(nbytes + 3 * SLAB_BYTES)
        with mmap.mmap(fd, max(nbytes, 1)) as shared:
            target = np.frombuffer(shared, np.float32, count=nbytes // 4).reshape(ds.shape)
            try:
                stream(h5py, np, out, ds, request["bytes_per_second"], request["inspect_seconds"], target)
            finally:
                del target
    finally:
        os.close(fd)


def serve(control_fd, package_dirs):
    """The fork server: import h5py once, then fork one reader per request on ``control_fd``."""
    sys.path[:0] = json.loads(package_dirs)
    control = socket.socket(fileno=int(control_fd))
    try:
        import h5py
        import numpy as np
    except ImportError as exc:
        control.send(json.dumps({"failed": f"cannot import h5py ({exc})"}).encode())
        return 1
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # readers are reaped by the kernel
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; EOF ends us
    control.send(b'{"ready": true}')
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(control, 1 << 16, 1)
        except OSError:
            return 0
        if not data:
            return 0  # the parent has gone
        if not fds:
            continue
        pid = os.fork()
        if pid == 0:
            control.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            try:
                with socket.socket(fileno=fds[0]) as sock:
                    read_file(h5py, np, sock, json.loads(data))
            finally:
                os._exit(0)
        os.close(fds[0])
        control.send(json.dumps({"pid": pid}).encode())


if __name__ == "__main__":
    sys.exit(serve(*sys.argv[2:4]) if sys.argv[1:2] == ["--serve"] else 2)
