"""The weight loader against hostile files (``tests/hostile_*.py``): each case ends in one
one-line ``ConvscopeError`` or a load of exactly the expected arrays, never another exception,
within ``SECONDS``, with the loader's memory growth under ``PARENT_MB`` and every reader process
under ``READER_MB`` (size bombs: ``BOMB_MB``).

The CI list is a few hundred deterministic cases (about 30-60 s here). The long run adds
thousands of seeded random flips, overwrites and truncations:

    CONVSCOPE_FUZZ=long [CONVSCOPE_FUZZ_CASES=3000] [CONVSCOPE_FUZZ_SEED=0] \\
        python -m pytest tests/test_fuzz_weights.py -q -x

Memory: this process's peak RSS (VmHWM) is reset before each case through /proc/self/clear_refs;
the readers (children of the fork server) are sampled every 2 ms from /proc while a case runs.
"""

import faulthandler
import os
import pathlib
import threading
import time

import numpy as np
import pytest

from engine import h5_isolated
from engine.errors import ConvscopeError
from engine.weights import read_network
from tests.hostile_bytes import ci_cases, long_cases

LONG = os.environ.get("CONVSCOPE_FUZZ") == "long"
SECONDS = h5_isolated.INSPECT_SECONDS + 3.0
PARENT_MB = 64
READER_MB = 700  # the reader's own limit: its size at fork + 512 MiB of address space
BOMB_MB = 64  # the reader itself (Python, NumPy, h5py) is about 40 MiB


def _status(key):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _reset_peak():
    """Reset VmHWM to the current RSS; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
        return True
    except OSError:
        return False


class ReaderMemory:
    """Peak RSS of this process's grandchildren (the readers forked by the fork server)."""

    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()
        self._thread = None

    def _descendants(self):
        found, frontier = [], [os.getpid()]
        while frontier:
            pid = frontier.pop()
            try:
                with open(f"/proc/{pid}/task/{pid}/children") as children:
                    kids = [int(k) for k in children.read().split()]
            except OSError:
                kids = []
            found += kids
            frontier += kids
        return found

    def _sample(self):
        while not self._stop.wait(0.002):
            for pid in self._descendants():
                try:
                    with open(f"/proc/{pid}/statm") as statm:
                        self.peak = max(self.peak, int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE"))
                except (OSError, ValueError, IndexError):
                    pass

    def __enter__(self):
        self.peak = 0
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("hostile")


def run_case(case, folder: pathlib.Path):
    """Build and load one case; checks everything a case must satisfy; returns the error or None."""
    path, arrays = case.build(folder)
    rss_before = _status("VmRSS")
    exact_peak = _reset_peak()
    faulthandler.dump_traceback_later(120, exit=True)  # a hung loader ends the run, with stacks
    try:
        with ReaderMemory() as readers:
            start = time.monotonic()
            try:
                net, error = read_network(path), None
            except ConvscopeError as exc:
                net, error = None, str(exc)
            elapsed = time.monotonic() - start
    finally:
        faulthandler.cancel_dump_traceback_later()
    grown = (_status("VmHWM") - rss_before) / 2 ** 20 if exact_peak else 0.0
    where = f"{case.name}: {error or 'loaded'}"
    assert elapsed < SECONDS, f"{where} took {elapsed:.1f} s"
    memory = BOMB_MB if "bomb" in case.tags else None
    assert grown < (memory or PARENT_MB), f"{where}: the loader grew by {grown:.0f} MiB"
    assert readers.peak / 2 ** 20 < (memory or READER_MB), f"{where}: a reader used {readers.peak >> 20} MiB"
    if case.expect == "error":
        assert error is not None, f"{case.name} loaded; it must be refused"
    if case.expect == "load":
        assert error is None, f"{case.name} must load: {error}"
        for name, (kernel, bias) in arrays.items():
            assert np.array_equal(net.layer(name).kernel, kernel), f"{case.name}: {name} kernel"
            assert np.array_equal(net.layer(name).bias, bias), f"{case.name}: {name} bias"
    if error is not None:
        assert error and "\n" not in error, f"{case.name}: not one line: {error!r}"
        for fragment in case.fragments:
            assert fragment in error, f"{case.name}: {fragment!r} not in {error!r}"
    else:
        for layer in net.layers:
            for array in (layer.kernel, layer.bias):
                assert array is None or (array.dtype == np.float32 and np.isfinite(array).all())
    return error


CI_CASES = ci_cases()


def test_ci_has_a_few_hundred_cases_of_every_kind():
    assert len(CI_CASES) >= 300
    kinds = {case.name.split("_")[0] for case in CI_CASES}
    assert {"external", "virtual", "soft", "bomb", "flip", "truncated", "config", "nb", "dtype", "value",
            "path"} <= kinds


@pytest.mark.parametrize("case", CI_CASES, ids=[case.name for case in CI_CASES])
def test_hostile_file(case, folder):
    run_case(case, folder)


LONG_CASES = long_cases(int(os.environ.get("CONVSCOPE_FUZZ_CASES", 3000)),
                        int(os.environ.get("CONVSCOPE_FUZZ_SEED", 0))) if LONG else []


@pytest.mark.skipif(not LONG, reason="the long fuzz run: set CONVSCOPE_FUZZ=long")
@pytest.mark.parametrize("case", LONG_CASES, ids=[case.name for case in LONG_CASES])
def test_hostile_file_long(case, folder):
    run_case(case, folder)
