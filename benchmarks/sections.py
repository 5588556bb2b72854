"""The sections of ``benchmarks/run.py``: each validates its configurations, then times them.

``Context`` holds the settings, the weight file, the contenders (built once, lazily), the
reference, and collects rows (see ``report.py``), start-up and memory records and notes.
"""

import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchmarks import frameworks as fw
from benchmarks import techniques as tq
from benchmarks.timing import interleaved, median_ms, rel_err

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORKER = ROOT / "benchmarks" / "worker.py"
FILTER_BATCH = 32  # the engine's filters batch (the CLI's default), given to batched PyTorch too
KIND_LABEL = {"forward": "forward", "forward_grad": "fwd + input grad", "conv": "fwd", "conv_backward": "bwd-input"}


class Context:
    def __init__(self, args, weights):
        self.args, self.weights = args, pathlib.Path(weights)
        self.rows, self.startup, self.memory, self.notes = [], [], [], []
        self._contenders = None
        self._reference_engine = None

    def note(self, text, log=True):
        self.notes.append(text)
        if log:
            print(f"  note: {text}", flush=True)

    @property
    def contenders(self) -> dict:
        if self._contenders is None:
            self._contenders = {}
            for name in self.args.contenders:
                try:
                    made = fw.make(name, self.weights, self.args.threads, self._contenders.get("pytorch"))
                except Exception as exc:  # noqa: BLE001 - one broken framework must not stop the others
                    self.note(f"{fw.NAMES[name]} skipped: {type(exc).__name__}: {exc}")
                    continue
                self._contenders[name] = made
        return self._contenders

    @property
    def torch_reference(self):
        c = self.contenders.get("pytorch")
        return c.reference if c is not None else None

    def reference(self, kind, x, g):
        """PyTorch's result (TorchVGG16) for a network task; the NumPy engine backend without torch."""
        ref = self.torch_reference
        if ref is not None:
            if kind == "forward":
                return ref.outputs(x, ["block5_pool"])["block5_pool"]
            return ref.input_gradient(x, "block5_pool", g)
        if self._reference_engine is None:
            import engine

            self._reference_engine = engine.load(self.weights, device="reference")
            self.note("torch is missing: validated against the engine's NumPy reference backend")
        m = self._reference_engine
        if kind == "forward":
            return m.forward(x, outputs=["block5_pool"])["block5_pool"]
        return m.input_gradient(x, "block5_pool", g)

    # ----------------------------------------------------------------------------------------
    def validate_and_time(self, section, name, flops, runs, expected, reps, warmup, fixups=None):
        """Run each callable once, compare with ``expected``, time those within tolerance."""
        row = {"section": section, "name": name, "flops": flops, "ms": {}, "times_s": {}, "error": {},
               "status": {}, "note": ""}
        timed = {}
        for contender, run in runs.items():
            if run is None:
                row["status"][contender], row["error"][contender] = "n/a", None
                continue
            err = rel_err(run(), expected)
            if err > self.args.tolerance and fixups and contender in fixups:
                err, note = fixups[contender](err)
                row["note"] = "; ".join(n for n in (row["note"], note) if n)
            row["error"][contender] = err
            row["status"][contender] = "ok" if err <= self.args.tolerance else "FAIL"
            if row["status"][contender] == "ok":
                timed[contender] = run
        times = interleaved(timed, reps, warmup, self.args.pause)
        row["times_s"] = times
        row["ms"] = {c: median_ms(t) for c, t in times.items()}
        shown = ", ".join(f"{c} {v:.1f} ms" for c, v in row["ms"].items() if v is not None)
        fails = [c for c, s in row["status"].items() if s == "FAIL"]
        print(f"  {name}: {shown}" + (f"  FAIL: {', '.join(fails)}" if fails else ""), flush=True)
        self.rows.append(row)
        return row


# ------------------------------------------------------------------------------------ network


def section_network(ctx):
    args = ctx.args
    for size in args.sizes:
        for batch in args.batches:
            rng = np.random.default_rng([size, batch])
            import engine

            x = engine.preprocess_input(rng.integers(0, 256, (batch, size, size, 3)).astype(np.float32))
            g = rng.standard_normal((batch, size // 32, size // 32, 512)).astype(np.float32)
            for kind in ("forward", "forward_grad"):
                flops = fw.conv_flops(size, batch) * (1 if kind == "forward" else 2)
                runs = {n: c.prepare((kind, x, g)) for n, c in ctx.contenders.items()}
                expected = ctx.reference(kind, x, g)
                fixups = None
                if kind == "forward_grad":
                    fixups = {c: (lambda err, c=c, x=x, g=g: _follow_decisions(ctx, c, x, g, err))
                              for c in ("engine", "pytorch")}
                ctx.validate_and_time("network", f"{KIND_LABEL[kind]} {size}px b{batch}", flops, runs,
                                      expected, args.reps, args.warmup, fixups)


def _follow_decisions(ctx, name, x, g, err):
    """A float32 gradient vs the float64 reference made to follow that contender's own near-tie
    ReLU/pool decisions.

    Through ReLUs and max-pools the input gradient depends on discrete decisions; where two float32
    implementations round a near-tie differently the gradients differ by far more than rounding
    (see tests/reference_models.py): PyTorch's own float32 gradient is ~5e-3 from its float64 one
    on these inputs. Following each contender's decisions tells a flip from a bug.
    """
    ref, contender = ctx.torch_reference, ctx.contenders.get(name)
    if ref is None or contender is None or not hasattr(contender, "all_outputs"):
        return err, ""
    from tests.reference_models import decisions_from_outputs

    forced = decisions_from_outputs(ref.table, contender.all_outputs(x))
    followed = rel_err(contender.prepare(("forward_grad", x, g))(), ref.input_gradient(x, "block5_pool", g, forced=forced))
    note = f"{name}: gradient error {err:.1e} from near-tie ReLU/pool decisions, {followed:.1e} when the reference follows its own"
    return followed, note


# ------------------------------------------------------------------------------------- layers


def _layer_reference(ctx, i, kind, data):
    """Float64 result of conv layer i alone (PyTorch, or the NumPy reference kernels)."""
    name = fw.CONV_LAYERS[i]["name"]
    engine_c = ctx.contenders["engine"]
    spec = engine_c.model.spec.layer(name)
    kernel, bias = (np.asarray(a, np.float64) for a in (spec.kernel, spec.bias))
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        from kernels import reference as ref

        d = np.asarray(data, np.float64)
        if kind == "conv":
            return ref.conv2d_forward(d, kernel, bias, (1, 1), True, np.empty(d.shape[:3] + (kernel.shape[3],)))
        return ref.conv2d_backward_input(d, kernel, (1, 1), np.empty(d.shape[:3] + (kernel.shape[2],)))
    w = torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy())
    d = torch.from_numpy(fw.nchw(np.asarray(data, np.float64)))
    with torch.no_grad():
        if kind == "conv":
            out = torch.relu(F.conv2d(d, w, torch.from_numpy(bias), padding=1))
        else:
            out = F.conv_transpose2d(d, w, padding=1)
    return fw.nhwc(out.numpy())


def section_layers(ctx):
    args = ctx.args
    if "engine" not in ctx.contenders:
        ctx.note("layers section needs the engine")
        return
    size = args.layer_size
    for i, (name, h, ci, co) in enumerate(fw.layer_inputs(size)):
        rng = np.random.default_rng([size, i])
        flops = 2 * h * h * 9 * ci * co
        for kind, data in (("conv", rng.random((1, h, h, ci), dtype=np.float32)),
                           ("conv_backward", rng.standard_normal((1, h, h, co)).astype(np.float32))):
            runs = {n: c.prepare((kind, i, data)) for n, c in ctx.contenders.items()}
            expected = _layer_reference(ctx, i, kind, data)
            ctx.validate_and_time("layers", f"{name} {KIND_LABEL[kind]} {h}px", flops, runs, expected,
                                  args.reps, args.warmup)


# --------------------------------------------------------------------------------- techniques


def section_techniques(ctx):
    """Gate: one ascent step (one octave) within tolerance of PyTorch's, on the change it makes.

    Iterated gradient ascent amplifies float32 rounding: a ReLU or max-pool near-tie decided
    differently changes one step's gradient by ~1e-3, and later steps follow the difference, so
    two correct implementations (Keras and PyTorch included) drift apart by 1e-3 to 1e-1 over a
    whole run. The end-to-end difference is therefore reported in the note, not gated.
    """
    args = ctx.args
    engine_c, ref = ctx.contenders.get("engine"), ctx.torch_reference
    if engine_c is None or ref is None:
        ctx.note("techniques need the engine and PyTorch (the reference algorithm): skipped")
        return
    keras_on = "keras" in ctx.contenders
    jobs = []
    if tq.engine_module("filters") is None:
        ctx.note("filters timing skipped: engine.viz.filters does not exist")
    else:
        layer, count, size, steps, k = args.filters
        filters = list(range(count))
        starts = tq.filter_starts(filters, size)
        outputs = {"pytorch": tq.torch_outputs(ref, layer)}
        if keras_on:
            outputs["keras"] = tq.keras_outputs(ctx.weights, [layer])

        def make(contender, n_steps, layer=layer, size=size, filters=filters, starts=starts, outputs=outputs, k=k):
            if contender == "engine":
                return lambda: tq.engine_filters(engine_c.model, layer, filters, size, n_steps)[:k]
            if contender == "pytorch_batched":  # the engine's batch (32), the first K filters
                return lambda: tq.filters_batched(outputs["pytorch"], layer, starts[:k], filters[:k], n_steps,
                                                  batch=FILTER_BATCH)
            return lambda: tq.filters_one_at_a_time(outputs[contender], layer, starts[:k], filters[:k], n_steps)

        def followed(contender, layer=layer, starts=starts, filters=filters, k=k):
            """PyTorch's first step of each filter, one at a time, following the decisions that the
            engine (or batched PyTorch) took in its first batch, so with its exact arithmetic."""
            first = starts[: min(FILTER_BATCH, k)]
            if contender == "engine":
                forced = _engine_decisions(engine_c.model, first, layer)
            else:
                forced = _torch_decisions(ref, first, layer)
            return np.concatenate([
                tq.filters_one_at_a_time(_forced_outputs(ref, layer, forced, i), layer, starts[i : i + 1], filters[i : i + 1], 1)
                for i in range(len(first))]) - starts[: len(first)], len(first)

        label = f"filters {layer} x{count} {size}px {steps} steps"
        # the frameworks run filter after filter (PyTorch batched: batch after batch), each an
        # independent ascent: K of them, timed, then scaled to COUNT; the engine runs all COUNT
        # (in its batches) every time
        names = ["engine", "pytorch", "pytorch_batched"] + (["keras"] if keras_on else [])
        jobs.append((label, make, steps, starts[:k], count / k, followed, names))
    if tq.engine_module("dream") is None:
        ctx.note("dream timing skipped: engine.viz.dream does not exist")
    else:
        size, octaves, steps = args.dream
        layers = tq.DREAM_LAYERS
        img = tq.dream_image(size)
        d_outputs = {"pytorch": tq.torch_outputs(ref, "block5_conv1")}
        if keras_on:
            d_outputs["keras"] = tq.keras_outputs(ctx.weights, list(layers))

        def make(contender, n_steps, steps=steps, octaves=octaves, img=img, outputs=d_outputs):
            setting = tq.dream_setting(octaves if n_steps == steps else 1, n_steps)
            if contender == "engine":
                return lambda: tq.engine_dream(engine_c.model, img, **setting)
            return lambda: tq.dream_reference(outputs[contender], img, **setting)

        def d_followed(contender, img=img):
            forced = _engine_decisions(engine_c.model, img, "block5_conv1")
            return tq.dream_reference(_forced_outputs(ref, "block5_conv1", forced, 0), img,
                                      **tq.dream_setting(1, 1)) - img, 1

        names = ["engine", "pytorch"] + (["keras"] if keras_on else [])
        jobs.append((f"dream {size}px {octaves} octaves x {steps} steps", make, steps, img, 1.0, d_followed, names))
    for label, make, steps, start, scale, followed, names in jobs:
        start = np.asarray(start, np.float64)
        one = {c: make(c, 1)() - start for c in names}  # the change made by one step
        runs = {c: make(c, steps) for c in names}
        row = {"section": "techniques", "name": label, "flops": None, "ms": {}, "times_s": {}, "error": {},
               "status": {}, "note": ""}
        timed, ends = {}, {}
        recheck = ""
        for c in names:
            row["error"][c] = rel_err(one[c], one["pytorch"])
            row["status"][c] = "ok" if row["error"][c] <= args.tolerance else "FAIL"
            if c in ("engine", "pytorch_batched") and row["status"][c] == "FAIL":
                # a near-tie ReLU/pool decision moves one normalised step by far more than rounding
                # (see _follow_decisions); PyTorch made to follow the contender's tells a flip from a bug
                expected, n = followed(c)
                err = rel_err(one[c][:n], expected)
                recheck += (f"; {c}'s first step {row['error'][c]:.1e} from PyTorch's one at a time, {err:.1e} "
                            f"when PyTorch follows its ReLU/max-pool decisions (first {n} images)")
                row["error"][c], row["status"][c] = err, "ok" if err <= args.tolerance else "FAIL"
            ends[c] = runs[c]()  # the whole run once: warm-up, and the end-to-end difference
            if row["status"][c] == "ok":
                timed[c] = runs[c]
        drift = {c: rel_err(ends[c] - start, ends["pytorch"] - start) for c in names if c != "pytorch"}
        row["end_to_end_error"] = drift
        row["note"] = "end-to-end change vs PyTorch's (not gated): " + ", ".join(f"{c} {v:.1e}" for c, v in drift.items()) + recheck
        row["times_s"] = interleaved(timed, args.technique_reps, 0, args.pause)
        if scale != 1:
            row["times_s"] = {c: [t * (scale if c != "engine" else 1) for t in ts] for c, ts in row["times_s"].items()}
            row["note"] += (f"; PyTorch and Keras ran the first {len(start)} filters one at a time (PyTorch "
                            f"batched: in batches of {FILTER_BATCH}), their time x{scale:g} (filters are "
                            f"independent runs); the engine ran all {int(round(scale * len(start)))}")
        row["ms"] = {c: median_ms(t) for c, t in row["times_s"].items()}
        print(f"  {label}: " + ", ".join(f"{c} {v:.0f} ms" for c, v in row["ms"].items()) + f"; {row['note']}", flush=True)
        ctx.rows.append(row)


def _engine_decisions(model, x, deepest):
    """The engine's ReLU masks and max-pool winners on x, up to ``deepest``, in PyTorch's terms."""
    from tests.reference_models import decisions_from_outputs

    names = [t["name"] for t in fw.TABLE]
    table = fw.TABLE[: names.index(deepest) + 1]
    return decisions_from_outputs(table, model.forward(x, outputs=[t["name"] for t in table]))


def _torch_decisions(ref, x, deepest):
    """PyTorch's (float32, this batch) ReLU masks and max-pool winners on x, up to ``deepest``."""
    import torch

    names = [t["name"] for t in fw.TABLE]
    table = fw.TABLE[: names.index(deepest) + 1]
    from tests.reference_models import decisions_from_outputs

    # with autograd on, as filters_batched runs it (oneDNN picks its algorithm per call and mode)
    acts = ref(torch.tensor(np.asarray(x, np.float32), requires_grad=True), stop_at=deepest)
    return decisions_from_outputs(table, {t["name"]: acts[t["name"]].detach().numpy() for t in table})


def _forced_outputs(ref, deepest, forced, i):
    """outputs(x) of the PyTorch reference for image i of ``forced``'s batch, following them."""
    mine = {kind: {name: a[i : i + 1] for name, a in table.items()} for kind, table in forced.items()}
    return lambda xt: ref(xt, stop_at=deepest, forced=mine)


# ------------------------------------------------------------------------ start-up and memory


def spawn(contender, ctx, size, batch, work, env_extra=None, onnx=None, extra=()):
    """Run worker.py; (seconds from spawn to its first call, its JSON record, wait4's ru_maxrss KiB).

    ru_maxrss of a child includes the parent's RSS at fork time (Linux keeps it across exec), so
    the peak memory reported is the worker's own VmHWM; ru_maxrss is kept in the JSON.
    """
    cmd = [sys.executable, str(WORKER), contender, str(ctx.weights), "--size", str(size), "--batch",
           str(batch), "--threads", str(ctx.args.threads), "--work", work]
    if onnx:
        cmd += ["--onnx", str(onnx)]
    cmd += list(extra)
    env = dict(os.environ, **(env_extra or {}))
    errors = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: a chatty child cannot block
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errors, text=True, env=env, cwd=ROOT)
    first, record = None, {}
    for line in proc.stdout:
        if line.startswith("first call done"):
            first = time.perf_counter() - start
        elif line.startswith("{"):
            record = json.loads(line)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    errors.seek(0)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {contender} failed: {errors.read().strip().splitlines()[-1:]}")
    errors.close()
    if first is None:
        first = time.perf_counter() - start
    return first, record, usage.ru_maxrss


def _onnx_file(ctx):
    c = ctx.contenders.get("onnxruntime")
    return os.path.join(c.tmp.name, "vgg16_conv.onnx") if c is not None else None


def section_startup(ctx):
    args, size = ctx.args, ctx.args.startup_size
    seconds, _, _ = spawn("python", ctx, size, 1, "forward")
    ctx.startup.append({"name": "python interpreter alone", "seconds": seconds, "phases": {}})
    with tempfile.TemporaryDirectory(prefix="convscope-numba-") as cache:
        env = {"NUMBA_CACHE_DIR": cache}
        if args.quick:
            ctx.note("--quick: first-run compile time not measured (compiling takes ~30 s of CPU)")
        else:
            fresh, record, _ = spawn("engine", ctx, size, 1, "forward", env)
            ctx.startup.append({"name": "convscope, empty Numba cache (compiles)", "seconds": fresh,
                                "phases": record.get("phases", {})})
        cached, record, _ = spawn("engine", ctx, size, 1, "forward", env if not args.quick else None)
        ctx.startup.append({"name": "convscope, cached kernels", "seconds": cached, "phases": record.get("phases", {})})
        if not args.quick:
            ctx.startup[-2]["note"] = f"first-run compile ~{fresh - cached:.1f} s"
    for name in ("pytorch", "onnxruntime", "keras"):
        if name in ctx.contenders:
            seconds, record, _ = spawn(name, ctx, size, 1, "forward", onnx=_onnx_file(ctx))
            ctx.startup.append({"name": fw.NAMES[name], "seconds": seconds, "phases": record.get("phases", {})})
    for r in ctx.startup:
        print(f"  {r['name']}: {r['seconds']:.2f} s to first forward ({size}px b1)", flush=True)


def _memory_row(ctx, name, work, spawned):
    """Record one worker's peak RSS (from ``spawn``'s result) as a row of the memory table."""
    _, record, ru_maxrss = spawned
    peak = record["rss_end_kib"]
    ctx.memory.append({"contender": name, "work": work, "peak_mib": peak / 1024,
                       "loaded_mib": record.get("rss_loaded_kib", 0) / 1024,
                       "wait4_ru_maxrss_mib": ru_maxrss / 1024})
    print(f"  {name}: {work}: peak {peak / 1024:.0f} MiB", flush=True)


def section_memory(ctx):
    size, batch = ctx.args.memory_size, ctx.args.memory_batch
    for name in ctx.contenders:
        work = "forward" if name == "onnxruntime" else "both"
        spawned = spawn(name, ctx, size, batch, work, onnx=_onnx_file(ctx))
        done = " + ".join(spawned[1].get("work", [work]))
        _memory_row(ctx, name, f"{done} {size}px b{batch}", spawned)
    # DeepDream at the techniques section's size and octaves (2 steps an octave: the peak is reached
    # in the first step of the largest octave), as the Keras example's algorithm runs it
    size, octaves, _ = ctx.args.dream
    for name in [c for c in ctx.contenders if c != "onnxruntime"]:
        spawned = spawn(name, ctx, size, 1, "dream", extra=("--octaves", str(octaves), "--steps", "2"))
        _memory_row(ctx, name, f"dream {size}px {octaves} octaves x 2 steps", spawned)


SECTIONS = {"network": section_network, "layers": section_layers, "techniques": section_techniques,
            "startup": section_startup, "memory": section_memory}


def run_section(ctx, name):
    SECTIONS[name](ctx)
