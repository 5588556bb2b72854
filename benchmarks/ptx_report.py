"""Compile every CUDA kernel for sm_90 without a GPU and report registers, shared memory and spills.

    python benchmarks/ptx_report.py [--cc 9.0]

Each kernel of ``kernels/cuda/catalog.py`` goes through ``numba.cuda.compile_ptx`` (NVVM from the
numba-cuda[cu13] wheels) with the argument types its launcher passes, then through
``ptxas -v -arch=sm_XY``. Exit status: 0 when everything compiles with no spills, 1 when a kernel
spills or fails to compile, 2 when a tool is missing.

ptxas must understand the PTX ISA that NVVM emits (9.5 for CUDA 13.5), so it comes from the
``nvidia-cuda-nvcc`` wheel of the same CUDA version as ``nvidia-nvvm`` (found automatically in
site-packages), or from the PTXAS environment variable. A system ptxas is used only as a last
resort: an older toolkit rejects the PTX with "Unsupported .version".
"""

import os

os.environ.pop("NUMBA_ENABLE_CUDASIM", None)  # real compilation, even when run from a test shell

import argparse
import importlib.metadata
import importlib.util
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

INSTALL_HINT = (
    'pip install -e ".[cuda]" and the ptxas of the same CUDA version: '
    'pip install "nvidia-cuda-nvcc==13.5.*" (or set PTXAS=/path/to/ptxas)'
)


def find_ptxas():
    """PTXAS from the environment, else the nvidia-cuda-nvcc wheel's, else one on PATH (or None)."""
    if os.environ.get("PTXAS"):
        return os.environ["PTXAS"]
    spec = importlib.util.find_spec("nvidia")
    for root in spec.submodule_search_locations if spec else []:
        for candidate in sorted(pathlib.Path(root).glob("*/bin/ptxas"), reverse=True):
            if os.access(candidate, os.X_OK):
                return str(candidate)
    return shutil.which("ptxas")


def ptxas_usage(ptxas, ptx, arch):
    """Parse ``ptxas -v``: registers, shared bytes, stack frame, spill stores and loads."""
    with tempfile.TemporaryDirectory() as tmp:
        source = pathlib.Path(tmp) / "kernel.ptx"
        source.write_text(ptx)
        result = subprocess.run(
            [ptxas, "-v", f"-arch={arch}", str(source), "-o", os.devnull],
            capture_output=True,
            text=True,
        )
    log = result.stdout + result.stderr
    if result.returncode != 0:
        lines = log.strip().splitlines()
        errors = [line for line in lines if "error" in line.lower() and "aborted" not in line]
        message = (errors or lines or [f"ptxas exit status {result.returncode}"])[0]
        if "Unsupported .version" in message:
            message += f" (this ptxas is older than the NVVM that wrote the PTX: {INSTALL_HINT})"
        raise RuntimeError(message)

    def number(pattern):
        found = re.search(pattern, log)
        return int(found.group(1)) if found else 0

    return {
        "registers": number(r"Used (\d+) registers"),
        "smem": number(r"(\d+) bytes smem"),
        "stack": number(r"(\d+) bytes stack frame"),
        "spill_stores": number(r"(\d+) bytes spill stores"),
        "spill_loads": number(r"(\d+) bytes spill loads"),
    }


class _TargetDevice:
    """Stands in for the GPU this machine may not have: numba-cuda compiles the device functions a
    kernel calls (``kernels/cuda/reduce.py``) for ``get_current_device().compute_capability``."""

    def __init__(self, cc):
        self.compute_capability = cc


def version(package):
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "missing"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cc", default="9.0", help="compute capability (default 9.0)")
    args = parser.parse_args(argv)
    cc = tuple(int(part) for part in args.cc.split("."))
    arch = f"sm_{cc[0]}{cc[1]}"

    if importlib.util.find_spec("numba_cuda") is None:
        print(f"numba-cuda is not installed: {INSTALL_HINT}", file=sys.stderr)
        return 2
    ptxas = find_ptxas()
    if ptxas is None or not os.access(ptxas, os.X_OK):
        print(f"no usable ptxas ({ptxas or 'none found'}): {INSTALL_HINT}", file=sys.stderr)
        return 2

    from unittest import mock

    from numba import cuda
    from numba.cuda import dispatcher

    from kernels.cuda import catalog

    no_gpu_needed = mock.patch.object(dispatcher, "get_current_device", lambda: _TargetDevice(cc))

    packages = ("numba", "numba-cuda", "nvidia-nvvm", "nvidia-cuda-nvcc")
    print(", ".join(f"{package} {version(package)}" for package in packages))
    print(f"ptxas {ptxas}, -arch={arch}\n")
    columns = ("regs", "smem B", "stack B", "spill st", "spill ld")
    header = f"{'kernel':<28}" + "".join(f" {column:>9}" for column in columns)
    print(header)
    print("-" * len(header))
    failures = []
    for name, function, argtypes in catalog.kernels():
        try:
            with no_gpu_needed:
                ptx, _ = cuda.compile_ptx(function, argtypes, cc=cc)
            use = ptxas_usage(ptxas, ptx, arch)
        except Exception as error:  # report every kernel, then fail once at the end
            print(f"{name:<28} FAILED: {str(error).strip().splitlines()[0][:300]}")
            failures.append(name)
            continue
        keys = ("registers", "smem", "stack", "spill_stores", "spill_loads")
        print(f"{name:<28}" + "".join(f" {use[key]:>9}" for key in keys))
        if use["spill_stores"] or use["spill_loads"]:
            failures.append(name)
    if failures:
        print(f"\nspilled or failed: {', '.join(failures)}", file=sys.stderr)
        return 1
    print("\nno spills")
    return 0


if __name__ == "__main__":
    sys.exit(main())
