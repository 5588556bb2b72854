"""Interleaved A/B of CPU kernels: a git revision's modules against the working tree's, one process.

    python benchmarks/ab.py --rev HEAD~1 --modules kernels/cpu/winograd.py --cases conv:32x128x128:64-64
    python benchmarks/ab.py --rev main --modules kernels/cpu/pool.py,kernels/cpu/winograd.py --cases net:1x224,filters
    python benchmarks/ab.py --rev HEAD~1 --modules kernels/cpu/pool.py --cases pool:32x128x128x64

The old side is each module's text at ``--rev`` (``git show``), compiled with ``cache=False`` under
another name; the old modules call each other's old functions, and the tree's for every other
module; the new side is the tree's module. Every
function of a module that the CPU backend exports or the convolution dispatch calls
(``kernels.cpu.<op>``, ``kernels.cpu.conv.conv_winograd``, ...) is swapped in for the side that
runs, so the cases go through the public ops and the model. Per case: both sides once (and whether
their results are the same bits), then ``--reps`` repetitions alternating which side goes first,
each timed by the wall clock and by CPU time (``time.process_time``: every thread of the process,
far steadier than wall time on a shared machine); printed: the median and range of the
per-repetition new/old ratios (below 1: the tree is faster).

Cases: ``conv:NxHxW:CI-CO`` (forward with bias + ReLU, then the input gradient), ``pool:NxHxWxC``
(max-pool 2x2 forward then backward), ``net:NxS`` (VGG16 conv stack forward + input gradient of
block5_pool, synthetic weights), ``filters`` (one 5-step batch of 32 block3_conv1 filters at
128 px) and ``dream`` (the benchmarked dream at 256 px, 2 octaves x 2 steps).
"""

import argparse
import importlib
import os
import pathlib
import subprocess
import sys
import time
import types

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_old(rev, path, loaded=None):
    """The module at ``path`` as of ``rev``, compiled without Numba's cache, as a new module.

    ``loaded``: {real module name: old module} already loaded; its imports of those names get
    the old modules (list a module before the modules that import from it)."""
    text = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    name = "_ab_old_" + path.replace("/", "_").removesuffix(".py")
    module = types.ModuleType(name)
    module.__file__ = str(ROOT / path)
    sys.modules[name] = module
    real = {key: sys.modules[key] for key in (loaded or {})}
    sys.modules.update(loaded or {})
    try:
        exec(compile(text.replace("cache=True", "cache=False"), f"{rev}:{path}", "exec"), module.__dict__)
    finally:
        sys.modules.update(real)
    return module


def bindings(new_modules):
    """[(namespace, attribute, new function)] where the backend or the dispatch holds a function
    of one of ``new_modules`` (so a side is chosen by rebinding those)."""
    import kernels.cpu
    import kernels.cpu.conv
    import kernels.cpu.im2col
    import kernels.cpu.winograd

    found = []
    namespaces = [kernels.cpu, kernels.cpu.conv, kernels.cpu.im2col, kernels.cpu.winograd]
    for module in new_modules:
        functions = {id(v): k for k, v in vars(module).items() if callable(v) and getattr(v, "__module__", None) == module.__name__}
        for ns in namespaces:
            for attr, value in list(vars(ns).items()):
                if id(value) in functions and ns is not module:
                    found.append((ns, attr, functions[id(value)], module))
    return found


def use(side, binds, old_modules):
    for ns, attr, name, module in binds:  # a function the old side lacks stays the tree's
        source = old_modules[module.__name__] if side == "old" else module
        setattr(ns, attr, getattr(source, name, getattr(module, name)))


def case_runner(spec):
    """(label, zero-argument callable returning arrays) for one case."""
    import numpy as np

    import kernels.cpu as cpu

    rng = np.random.default_rng(0)
    kind, _, rest = spec.partition(":")
    if kind == "conv":
        dims, channels = rest.split(":")
        n, h, w = map(int, dims.split("x"))
        ci, co = map(int, channels.split("-"))
        x = rng.standard_normal((n, h, w, ci)).astype(np.float32)
        kernel = (rng.standard_normal((3, 3, ci, co)) * (2 / (9 * ci)) ** 0.5).astype(np.float32)
        kernel.flags.writeable = False
        bias = rng.standard_normal(co).astype(np.float32)
        out, grad = np.empty((n, h, w, co), np.float32), np.empty_like(x)

        def run():
            cpu.conv2d_forward(x, kernel, bias, (1, 1), True, out)
            cpu.conv2d_backward_input(out, kernel, (1, 1), grad)
            return out, grad

        return f"conv {n}x{h}x{w} {ci}->{co} fwd+input grad", run
    if kind == "pool":
        n, h, w, c = map(int, rest.split("x"))
        x = rng.standard_normal((n, h, w, c)).astype(np.float32)
        out = np.empty((n, h // 2, w // 2, c), np.float32)
        argmax, grad = np.empty(out.shape, np.int32), np.empty_like(x)

        def run():
            cpu.maxpool_forward(x, (2, 2), out, argmax)
            cpu.maxpool_backward(out, argmax, (2, 2), grad)
            return out, argmax, grad

        return f"max-pool {n}x{h}x{w}x{c} fwd+bwd", run
    model = _model()
    from benchmarks import techniques as tq

    if kind == "net":
        n, s = map(int, rest.split("x"))
        x = rng.uniform(-120, 120, (n, s, s, 3)).astype(np.float32)
        g = rng.standard_normal((n, s // 32, s // 32, 512)).astype(np.float32)
        return f"VGG16 fwd+input grad {s}px b{n}", lambda: (model.input_gradient(x, "block5_pool", g),)
    if kind == "filters":
        return "filters block3_conv1 x32 128px 5 steps", lambda: (tq.engine_filters(model, "block3_conv1", range(32), 128, 5),)
    if kind == "dream":
        img = tq.dream_image(256)
        return "dream 256px 2 octaves x 2 steps", lambda: (tq.engine_dream(model, img, **tq.dream_setting(2, 2)),)
    raise SystemExit(f"error: unknown case {spec!r}: use conv:NxHxW:CI-CO, pool:NxHxWxC, net:NxS, filters or dream")


_MODEL = []


def _model():
    if not _MODEL:
        import engine
        from benchmarks.run import weights_file

        _MODEL.append(engine.load(weights_file(argparse.Namespace(weights=None)), device="cpu"))
    return _MODEL[0]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rev", required=True, help="the old side: a git revision")
    p.add_argument("--modules", required=True, help="comma-separated module paths, e.g. kernels/cpu/pool.py")
    p.add_argument("--cases", required=True, help="comma-separated cases (see above)")
    p.add_argument("--reps", type=int, default=7)
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    import engine  # noqa: F401  (the engine's thread and BLAS settings, before NumPy loads)
    import numpy as np

    paths = [m for m in args.modules.split(",") if m]
    new = [importlib.import_module(m.removesuffix(".py").replace("/", ".")) for m in paths]
    old = {}
    for module, path in zip(new, paths):
        old[module.__name__] = load_old(args.rev, path, old)
    for module in old.values():  # old modules call each other's old functions, not the tree's
        for attr, value in list(vars(module).items()):
            source = old.get(getattr(value, "__module__", None)) if callable(value) else None
            if source is not None and hasattr(source, getattr(value, "__name__", "")):
                setattr(module, attr, getattr(source, value.__name__))
    binds = bindings(new)
    print(f"old = {args.rev}, new = working tree; swapped: " + ", ".join(f"{ns.__name__}.{a}" for ns, a, _, _ in binds))
    for spec in [c for c in args.cases.split(",") if c]:
        label, run = case_runner(spec)
        results = {}
        for side in ("old", "new"):
            use(side, binds, old)
            results[side] = [np.array(a, copy=True) for a in run()]
        same = all(np.array_equal(a, b) for a, b in zip(results["old"], results["new"]))
        times = {"old": [], "new": []}
        for rep in range(args.reps):
            for side in (("old", "new") if rep % 2 == 0 else ("new", "old")):
                use(side, binds, old)
                wall, cpu = time.perf_counter(), time.process_time()
                run()
                times[side].append((time.perf_counter() - wall, time.process_time() - cpu))
                time.sleep(0.02)
        use("new", binds, old)
        t_old, t_new = np.array(times["old"]), np.array(times["new"])
        wall, cpu = t_new[:, 0] / t_old[:, 0], t_new[:, 1] / t_old[:, 1]
        print(f"{label}: old {np.median(t_old[:, 0]) * 1e3:.1f} ms, new {np.median(t_new[:, 0]) * 1e3:.1f} ms; new/old "
              f"CPU time {np.median(cpu):.3f} ({cpu.min():.2f}-{cpu.max():.2f}), wall {np.median(wall):.3f} "
              f"({wall.min():.2f}-{wall.max():.2f}); same bits: {same}", flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("KERAS_BACKEND", "torch")
    sys.exit(main())
