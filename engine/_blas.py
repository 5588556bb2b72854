"""CPU thread-pool and BLAS settings that must be made before numpy and numba load.

Two findings on the 2-core development machine (see benchmarks/kernel_sanity.py):

* OpenBLAS picks its kernels by CPU model and falls back to the AVX2 "Haswell" kernels on CPUs it
  does not recognise (seen under KVM), about 1.5x slower SGEMM than its AVX-512 "SkylakeX"
  kernels. ``OPENBLAS_CORETYPE`` overrides the choice, only when the CPU reports the AVX-512
  subsets those kernels use.
* A convolution alternates Numba parallel regions (transforms, im2col, epilogues) with OpenBLAS
  calls. Numba's OpenMP workers spin after each region and OpenBLAS's threads spin after each
  call, each stealing the cores the other needs: ``OMP_WAIT_POLICY=PASSIVE`` and a short
  ``OPENBLAS_THREAD_TIMEOUT`` took VGG16 forward+input-gradient from 726 to 424 ms there.

Each variable is only set when the user has not set it, and only while it can still take
effect (OpenBLAS reads its variables when numpy first loads it).
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


def configure_cpu_threads() -> None:
    """The settings above, applied once at ``import engine`` (before numpy where possible)."""
    prefer_avx512_openblas()
    if "numpy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
    if "numba" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
