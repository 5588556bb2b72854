"""Validation and interleaved timing, shared by every section of ``benchmarks/run.py``.

Contenders are timed in one process, round-robin: repetition r runs every contender once, in an
order rotated by r, so slow drifts of the machine (other jobs, thermal state, page cache) fall on
all of them alike. Warm-up calls are made first and not recorded. A short pause separates two
timed calls so that one framework's spinning worker threads do not eat into the next one's time.
The statistic reported is the median; every raw time goes into the JSON file.
"""

import time

import numpy as np

TOLERANCE = 1e-4  # relative error above which a contender is not timed (marked FAIL)


def rel_err(a, b) -> float:
    """||a - b|| / ||b|| in float64."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def interleaved(runs: dict, reps: int, warmup: int = 1, pause: float = 0.02) -> dict:
    """{name: [seconds per repetition]} for zero-argument callables, timed round-robin."""
    names = list(runs)
    for _ in range(warmup):
        for name in names:
            runs[name]()
    times = {name: [] for name in names}
    for r in range(reps):
        shift = r % len(names) if names else 0
        for name in names[shift:] + names[:shift]:
            time.sleep(pause)
            start = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - start)
    return times


def median_ms(seconds) -> float | None:
    return float(np.median(seconds)) * 1e3 if seconds else None
