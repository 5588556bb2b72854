"""Time the CPU backend's convolution on VGG16's 13 conv layers (224x224), validated first.

Runs every conv layer forward (bias + ReLU, with the max-pools in between so the shapes are
VGG16's) and then every layer's input gradient, through ``kernels.cpu``; prints per-layer and
total milliseconds and GFLOP/s (2 * Ho * Wo * kh * kw * Ci * Co per image per layer, the same
count for the input gradient). Before timing, one layer of each kind is checked against
``kernels.reference``. Random He-initialised weights: the timing does not depend on their values.

The engine's thread and BLAS settings (``engine/_blas.py``) are applied before NumPy loads, as
``import engine`` does; a variable set by hand wins, so compare e.g.

    python benchmarks/kernel_sanity.py
    OPENBLAS_CORETYPE=Haswell OMP_WAIT_POLICY=ACTIVE python benchmarks/kernel_sanity.py

Numba's OpenMP workers spin after each parallel region and steal a core from OpenBLAS's threads
(and OpenBLAS's spin likewise), which on 2 cores costs more than any kernel tuning: measured
fwd + bwd at 224 x 224, 726 ms by default vs 424 ms with ``OMP_WAIT_POLICY=PASSIVE`` (set before
numba starts its pool), ~400 ms adding ``OPENBLAS_THREAD_TIMEOUT=4``. The line printed first
shows those variables.

``--compare`` times every layer with each algorithm (im2col + GEMM, Winograd F(2x2, 3x3), F(4x4,
3x3)) forward and input gradient, interleaved A/B/C in one process, and prints each one's error
against the float64 reference on the same data. Kernels are read-only, as loaded weights should
be, so Winograd's kernel transform is cached and ``conv.choose_algorithm`` picks Winograd
(``--no-cache`` makes them writable: im2col, unless ``conv.WINOGRAD_UNCACHED_PIXELS_PER_CHANNEL``
is set).
"""

import argparse
import os
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # run from a checkout

from engine._blas import configure_cpu_threads

configure_cpu_threads()  # the engine's own settings (before numpy loads); variables set by hand win

import numpy as np  # noqa: E402

import kernels.cpu as cpu  # noqa: E402
from kernels import reference as ref  # noqa: E402
from kernels.cpu import conv, im2col, winograd  # noqa: E402

VGG16_CONVS = [  # (c_in, c_out, pool after)
    (3, 64, False), (64, 64, True),
    (64, 128, False), (128, 128, True),
    (128, 256, False), (256, 256, False), (256, 256, True),
    (256, 512, False), (512, 512, False), (512, 512, True),
    (512, 512, False), (512, 512, False), (512, 512, True),
]  # fmt: skip


def build_layers(rng, size):
    layers, h = [], size
    for ci, co, pool in VGG16_CONVS:
        kernel = (rng.standard_normal((3, 3, ci, co)) * np.sqrt(2 / (9 * ci))).astype(np.float32)
        kernel.flags.writeable = False  # immutable weights: Winograd caches their transform
        layers.append((h, kernel, np.zeros(co, np.float32), pool))
        h = h // 2 if pool else h
    return layers


def validate(rng):
    """One small layer and one deep layer, forward and input gradient, against the reference."""
    for h, ci, co in [(17, 3, 8), (14, 64, 40)]:
        x = rng.standard_normal((2, h, h, ci)).astype(np.float32)
        kernel = rng.standard_normal((3, 3, ci, co)).astype(np.float32)
        bias = rng.standard_normal(co).astype(np.float32)
        out = cpu.conv2d_forward(x, kernel, bias, (1, 1), True, np.empty((2, h, h, co), np.float32))
        expected = ref.conv2d_forward(x, kernel, bias, (1, 1), True, np.empty_like(out))
        grad = cpu.conv2d_backward_input(out, kernel, (1, 1), np.empty_like(x))
        expected_grad = ref.conv2d_backward_input(out, kernel, (1, 1), np.empty_like(x))
        for a, b in [(out, expected), (grad, expected_grad)]:
            err = np.linalg.norm(a - b) / np.linalg.norm(b)
            assert err < 1e-5, f"validation failed: relative error {err:.2e}"


def run_network(layers, batch, record=None):
    """Forward through every conv (+pool), then the input gradient of every conv, timing each."""
    x = np.random.default_rng(1).standard_normal((batch, layers[0][0], layers[0][0], 3))
    x = x.astype(np.float32)
    acts = []
    for i, (h, kernel, bias, pool) in enumerate(layers):
        out = np.empty((batch, h, h, kernel.shape[3]), np.float32)
        t = time.perf_counter()
        cpu.conv2d_forward(x, kernel, bias, (1, 1), True, out)
        if record is not None:
            record["fwd"][i] = min(record["fwd"][i], time.perf_counter() - t)
        acts.append(out)
        if pool:
            x = np.empty((batch, h // 2, h // 2, out.shape[3]), np.float32)
            cpu.maxpool_forward(out, (2, 2), x, np.empty(x.shape, np.int32))
        else:
            x = out
    for i, (h, kernel, _, _) in reversed(list(enumerate(layers))):
        grad_in = np.empty((batch, h, h, kernel.shape[2]), np.float32)
        t = time.perf_counter()
        cpu.conv2d_backward_input(acts[i], kernel, (1, 1), grad_in)
        if record is not None:
            record["bwd"][i] = min(record["bwd"][i], time.perf_counter() - t)


THREAD_ENV = ("OPENBLAS_CORETYPE", "OMP_WAIT_POLICY", "OPENBLAS_THREAD_TIMEOUT",
              "NUMBA_THREADING_LAYER", "NUMBA_NUM_THREADS")

ALGORITHMS = {
    "im2col": lambda *a: im2col.conv_im2col_gemm(*a),
    "wino2": lambda *a: winograd.conv_winograd(*a, m=2),
    "wino4": lambda *a: winograd.conv_winograd(*a, m=4),
}


def compare(layers, batch, repeats):
    """Per layer and direction: best wall ms of each algorithm (interleaved) and its error."""
    rng = np.random.default_rng(2)
    totals = {(name, d): 0.0 for name in ALGORITHMS for d in ("fwd", "bwd")}
    print(f"{'layer':>5} {'HxW':>7} {'Ci->Co':>9} {'dir':>3} " + " ".join(
        f"{name + ' ms':>10} {'GF/s':>6} {'err':>7}" for name in ALGORITHMS))
    for i, (h, kernel, bias, _) in enumerate(layers):
        ci, co = kernel.shape[2:]
        flops = 2 * batch * h * h * 9 * ci * co
        x = np.maximum(rng.standard_normal((batch, h, h, ci)), 0).astype(np.float32)
        g = rng.standard_normal((batch, h, h, co)).astype(np.float32)
        for d in ("fwd", "bwd"):
            if d == "fwd":
                args = (x, kernel, bias, (1, 1), True)
                out = np.empty((batch, h, h, co), np.float32)
                exact = ref.conv2d_forward(x.astype(np.float64), kernel.astype(np.float64),
                                           bias.astype(np.float64), (1, 1), True,
                                           np.empty(out.shape))
            else:
                args = (g, kernel, None, (1, 1), False)
                out = np.empty((batch, h, h, ci), np.float32)
                exact = ref.conv2d_backward_input(g.astype(np.float64), kernel.astype(np.float64),
                                                  (1, 1), np.empty(out.shape))
            best, errs = {}, {}
            for name, fn in ALGORITHMS.items():  # warm-up (compile, cache) and error
                fn(*args, out, d == "bwd")
                errs[name] = np.linalg.norm(out - exact) / np.linalg.norm(exact)
                best[name] = float("inf")
            for _ in range(repeats):
                for name, fn in ALGORITHMS.items():
                    t = time.perf_counter()
                    fn(*args, out, d == "bwd")
                    best[name] = min(best[name], time.perf_counter() - t)
            for name in ALGORITHMS:
                totals[(name, d)] += best[name]
            print(f"{i + 1:>5} {h:>3}x{h:<3} {ci:>4}->{co:<4} {d:>3} " + " ".join(
                f"{best[n] * 1e3:10.2f} {flops / best[n] / 1e9:6.1f} {errs[n]:7.1e}"
                for n in ALGORITHMS))
    for d in ("fwd", "bwd"):
        print(f"total {d}: " + "  ".join(
            f"{n} {totals[(n, d)] * 1e3:.1f} ms" for n in ALGORITHMS))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workspace-mb", type=float, default=None)
    parser.add_argument("--wino-workspace-mb", type=float, default=None)
    parser.add_argument("--compare", action="store_true", help="each algorithm per layer")
    parser.add_argument("--no-cache", action="store_true", help="writable kernels: no cache")
    parser.add_argument("--min-channels", type=int, default=None, help="Winograd threshold")
    args = parser.parse_args()
    if args.workspace_mb is not None:
        im2col.WORKSPACE_BYTES = int(args.workspace_mb * 2**20)
    if args.wino_workspace_mb is not None:
        winograd.WORKSPACE_BYTES = int(args.wino_workspace_mb * 2**20)
    if args.min_channels is not None:
        conv.WINOGRAD_MIN_CHANNELS = args.min_channels

    rng = np.random.default_rng(0)
    validate(rng)
    layers = build_layers(rng, args.size)
    if args.no_cache:
        for _, kernel, _, _ in layers:
            kernel.flags.writeable = True
    if args.compare:
        compare(layers, args.batch, args.repeats)
        return
    run_network(layers, args.batch)  # warm-up: compile/load kernels, fault in BLAS buffers
    inf = float("inf")
    record = {"fwd": [inf] * len(layers), "bwd": [inf] * len(layers)}
    cpu_seconds = inf  # CPU time of one whole pass: on a shared box, wall time is not ours alone
    for _ in range(args.repeats):
        t = time.process_time()
        run_network(layers, args.batch, record)
        cpu_seconds = min(cpu_seconds, time.process_time() - t)

    flops = [2 * args.batch * h * h * 9 * k.shape[2] * k.shape[3] for h, k, _, _ in layers]
    print(
        " ".join(f"{v}={os.environ.get(v, '(unset)')}" for v in THREAD_ENV) + " "
        f"size={args.size} batch={args.batch} workspace={im2col.WORKSPACE_BYTES / 2**20:g} MiB "
        f"winograd workspace={winograd.WORKSPACE_BYTES / 2**20:g} MiB "
        f"min channels={conv.WINOGRAD_MIN_CHANNELS} cache={not args.no_cache} "
        f"load={os.getloadavg()[0]:.2f} "
        f"(best of {args.repeats})"
    )
    print(f"{'layer':>5} {'HxW':>7} {'Ci->Co':>9} {'fwd ms':>8} {'GF/s':>6} {'bwd ms':>8} {'GF/s':>6}")
    for i, ((h, k, _, _), f) in enumerate(zip(layers, flops)):
        fwd, bwd = record["fwd"][i], record["bwd"][i]
        print(
            f"{i + 1:>5} {h:>3}x{h:<3} {k.shape[2]:>4}->{k.shape[3]:<4} "
            f"{fwd * 1e3:8.2f} {f / fwd / 1e9:6.1f} {bwd * 1e3:8.2f} {f / bwd / 1e9:6.1f}"
        )
    fwd, bwd, total = sum(record["fwd"]), sum(record["bwd"]), sum(flops)
    print(f"forward:        {fwd * 1e3:8.1f} ms  {total / fwd / 1e9:6.1f} GFLOP/s")
    print(f"backward-input: {bwd * 1e3:8.1f} ms  {total / bwd / 1e9:6.1f} GFLOP/s")
    print(f"fwd + bwd:      {(fwd + bwd) * 1e3:8.1f} ms  {2 * total / (fwd + bwd) / 1e9:6.1f} GFLOP/s")
    print(
        f"process CPU time of fwd + bwd (all threads, incl. pools and spin-waits): "
        f"{cpu_seconds * 1e3:.1f} ms = {2 * total / cpu_seconds / 1e9:.1f} GFLOP/s per core-second"
    )


if __name__ == "__main__":
    main()
