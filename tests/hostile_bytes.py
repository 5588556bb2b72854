"""Byte-level damage and non-files for the weight loader's fuzz suite, and the case lists.

Flips and truncations damage ``fixtures/hostile/tiny_keras2.h5`` (see ``tests.hostile_weights``);
flips land in metadata only (bytes outside every dataset's stored values, which no format can
tell from other valid values). ``ci_cases()`` is the deterministic list the test suite runs (a
few hundred); ``long_cases(n, seed)`` adds ``n`` seeded random flips, multi-byte overwrites and
truncations, for ``CONVSCOPE_FUZZ=long`` (see ``tests/test_fuzz_weights.py``).

``python -m tests.hostile_bytes --search [STEP]`` repeats the search that found ``HANG_FLIPS``:
every STEP-th metadata byte xor 0x01/0x80/0xff, walked with plain h5py in a forked child; it
prints the flips that hang (> 3 s) or crash.
"""

import os
import random
import signal
import sys
import time

import h5py

from tests.hostile_configs import config_cases, layout_2016_cases
from tests.hostile_weights import (
    BASE_FILE,
    CRASH_FLIPS,
    GREEDY_FLIPS,
    HANG_FLIPS,
    Case,
    _bomb_cases,
    _link_cases,
    _outside_cases,
    _value_cases,
    write_tiny,
)


def metadata_offsets(path=BASE_FILE):
    """Byte offsets of ``path`` outside the stored values of its datasets."""
    data = set()
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and obj.id.get_offset() is not None:
                start = obj.id.get_offset()
                data.update(range(start, start + obj.id.get_storage_size()))
        f.visititems(visit)
    return [i for i in range(os.path.getsize(path)) if i not in data]


def _damaged(name, damage, expect="either", fragments=(), tags=()):
    """The base file with ``damage(bytearray)`` applied in place."""

    def build(folder):
        content = bytearray(BASE_FILE.read_bytes())
        damage(content)
        path = folder / f"{name}.h5"
        path.write_bytes(bytes(content))
        return path, None

    return Case(name, build, expect, tuple(fragments), set(tags))


def flip_case(offset, xor, expect="either", fragments=(), tags=()):
    def damage(content):
        content[offset] ^= xor
    return _damaged(f"flip_{offset}_{xor:02x}", damage, expect, fragments, tags)


def truncation_case(length):
    def damage(content):
        del content[length:]
    return _damaged(f"truncated_{length}", damage, "error")


def _not_a_file_cases():
    def fifo(folder):
        path = folder / "weights_fifo.h5"
        if not path.exists():
            os.mkfifo(path)
        return path, None

    def symlink_to(target):
        def build(folder):
            path = folder / f"link{target.replace('/', '_')}.h5"
            if not path.is_symlink():
                path.symlink_to(target)
            return path, None
        return build

    def directory(folder):
        path = folder / "folder.h5"
        path.mkdir(exist_ok=True)
        return path, None

    def empty(folder):
        path = folder / "empty.h5"
        path.write_bytes(b"")
        return path, None

    def html(folder):
        path = folder / "page.h5"
        path.write_bytes(b"<!DOCTYPE html><title>403</title>")
        return path, None

    def sound(folder):  # the control: the undamaged file loads
        path = folder / "sound.h5"
        return path, write_tiny(path)

    return [
        Case("path_fifo", fifo, "error", ("not a regular file",)),
        Case("path_dev_urandom", symlink_to("/dev/urandom"), "error", ("not a regular file",)),
        Case("path_dev_zero", symlink_to("/dev/zero"), "error", ("not a regular file",)),
        Case("path_etc_passwd", symlink_to("/etc/passwd"), "error", ("not an HDF5 file",)),
        Case("path_directory", directory, "error", ("directory",)),
        Case("path_empty", empty, "error", ("empty",)),
        Case("path_html", html, "error", ("not an HDF5 file",)),
        Case("path_missing", lambda folder: (folder / "missing.h5", None), "error", ("does not exist",)),
        Case("sound_tiny_model", sound, "load"),
    ]


def ci_cases():
    """The deterministic cases the test suite runs (a few hundred)."""
    offsets = metadata_offsets()
    size = BASE_FILE.stat().st_size
    flips = [flip_case(o, x, "error", ("did not finish reading its metadata within",)) for o, x in HANG_FLIPS]
    flips += [flip_case(o, x, "error") for o, x in GREEDY_FLIPS + CRASH_FLIPS]
    xors = (0x01, 0x80, 0xFF, 0x10)
    flips += [flip_case(o, xors[i % len(xors)]) for i, o in enumerate(offsets[::len(offsets) // 120])]
    truncations = [truncation_case(n) for n in sorted({0, 1, 8, 100, 512, 1024, *range(2048, size, size // 24)})
                   if n > 0]
    cases = (_outside_cases() + _link_cases() + _bomb_cases() + _value_cases() + config_cases()
             + layout_2016_cases() + _not_a_file_cases() + flips + truncations)
    names = [case.name for case in cases]
    assert len(names) == len(set(names)), "case names must be unique"
    return cases


def long_cases(n, seed=0):
    """``n`` seeded random flips (one bit, one byte, 2-8 adjacent bytes) and truncations."""
    rng = random.Random(seed)
    offsets = metadata_offsets()
    size = BASE_FILE.stat().st_size
    cases = []
    for i in range(n):
        roll = rng.random()
        if roll < 0.6:
            cases.append(flip_case(rng.choice(offsets), 1 << rng.randrange(8)))
        elif roll < 0.8:
            cases.append(flip_case(rng.choice(offsets), rng.randrange(1, 256)))
        elif roll < 0.95:
            start, width = rng.choice(offsets), rng.randrange(2, 9)
            junk = bytes(rng.randrange(256) for _ in range(width))

            def damage(content, start=start, junk=junk):
                content[start:start + len(junk)] = junk[: len(content) - start]
            cases.append(_damaged(f"overwrite_{i}_{start}_{junk.hex()}", damage))
        else:
            cases.append(truncation_case(rng.randrange(1, size)))
    unique = {case.name: case for case in cases}
    return list(unique.values())


def _walk(path):
    with h5py.File(path, "r") as f:
        links = []
        f.visititems_links(lambda name, link: links.append((name, link)))
        for name, link in links:
            if isinstance(link, h5py.HardLink):
                obj = f[name]
                for key in obj.attrs.keys():
                    obj.attrs[key]
                if isinstance(obj, h5py.Dataset):
                    obj[()]


def search(step=1, seconds=3.0, scratch="/tmp/convscope_flip_search.h5"):
    """Print (offset, xor, 'hang'|'crash') for flips of the base file that hang or crash h5py."""
    content = BASE_FILE.read_bytes()
    for offset in metadata_offsets()[::step]:
        for xor in (0x01, 0x80, 0xFF):
            mutated = bytearray(content)
            mutated[offset] ^= xor
            with open(scratch, "wb") as out:
                out.write(mutated)
            pid = os.fork()
            if pid == 0:
                try:
                    _walk(scratch)
                finally:
                    os._exit(0)
            start = time.monotonic()
            while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() - start < seconds:
                time.sleep(0.005)
            if done[0] == 0:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                print(offset, hex(xor), "hang", flush=True)
            elif os.WIFSIGNALED(done[1]):
                print(offset, hex(xor), "crash", flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--search"]:
        search(int(sys.argv[2]) if len(sys.argv) > 2 else 1)
