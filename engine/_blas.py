"""Make numpy's bundled OpenBLAS use its AVX-512 kernels on CPUs that have them.

OpenBLAS picks its kernels by CPU model; on CPUs it does not recognise (seen: AMD Zen 5) it falls
back to the AVX2 "Haswell" kernels, about half the SGEMM speed the convolutions could get.
``OPENBLAS_CORETYPE`` overrides the choice, but only if it is set before numpy loads OpenBLAS,
so ``engine`` calls ``prefer_avx512_openblas()`` before importing numpy, and leaves any value the
user set alone. It is only set when the CPU reports the AVX-512 subsets SkylakeX kernels use.
"""

import os
import sys

_SKYLAKEX_FLAGS = {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"}


def _cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def prefer_avx512_openblas() -> bool:
    """Set OPENBLAS_CORETYPE=SkylakeX when safe and still effective; True when it was set."""
    if "OPENBLAS_CORETYPE" in os.environ or "numpy" in sys.modules:
        return False
    if not _SKYLAKEX_FLAGS <= _cpu_flags():
        return False
    os.environ["OPENBLAS_CORETYPE"] = "SkylakeX"
    return True
