"""The two sections of ``benchmarks/gpu.py``, each validating its configurations, then timing them.

``Bench`` holds the engine on each backend, PyTorch twins of the loaded network (float32 on the
CPU and on CUDA, timed; float64 on the CPU, the reference) and the rows (``benchmarks/report.py``'s
shape, with the contenders below). A GPU call is timed up to a synchronise. Imports are lazy:
``benchmarks/gpu.py`` sets the thread and simulator environment before numpy and numba load.
"""

CONTENDERS = ("engine_cpu", "engine_cuda", "pytorch_cpu", "pytorch_cuda")
LABEL = {"engine_cpu": "engine CPU", "engine_cuda": "engine CUDA", "pytorch_cpu": "PyTorch CPU",
         "pytorch_cuda": "PyTorch CUDA"}

# ------------------------------------------------------------------------ PyTorch twin


class TorchTwin:
    """The engine's conv stack up to layer ``last`` in PyTorch, with the engine's own weights.

    ``seq(name)`` is a plain NCHW ``nn.Sequential`` up to that layer (what is timed); calling the
    twin on an NHWC tensor returns {layer: NHWC output} and, given ``forced`` decisions, follows
    another implementation's ReLU masks and max-pool winners in its backward, as
    ``tests.reference_models.TorchVGG16`` does for the official VGG16 files; this works for any
    plain CNN the engine loads (the --simulator network too). Reading the weights is not checked
    here: tests/test_model_reference.py checks it against TorchVGG16, which reads the file itself.
    """

    def __init__(self, model, last, dtype, device):
        import torch

        self.torch, self.device, self.parts, modules = torch, device, [], []
        for spec in model.layers[: model.layer_index(last) + 1]:
            if spec.kind == "conv2d":
                kh, kw, c_in, c_out = spec.kernel.shape
                if spec.activation not in ("relu", "linear") or (spec.padding == "same" and (kh % 2 == 0 or kw % 2 == 0)):
                    raise ValueError(f"the PyTorch twin has no {spec.activation}/{spec.padding} {kh}x{kw} convolution")
                conv = torch.nn.Conv2d(c_in, c_out, (kh, kw), padding=(kh // 2, kw // 2) if spec.padding == "same" else 0)
                conv.weight.data = torch.from_numpy(spec.kernel.transpose(3, 2, 0, 1).copy())
                conv.bias.data = torch.from_numpy(spec.bias.copy())
                block = [conv] + ([torch.nn.ReLU()] if spec.activation == "relu" else [])
            elif spec.kind == "maxpool2d":
                block = [torch.nn.MaxPool2d(spec.pool_size)]
            elif spec.kind == "dropout":
                block = []
            else:
                raise ValueError(f"the PyTorch twin covers the conv stack only, not {spec.name} ({spec.kind})")
            self.parts.append((spec, len(modules), len(modules) + len(block)))
            modules += block
        self.modules = torch.nn.Sequential(*modules).to(dtype=dtype, device=device).eval().requires_grad_(False)

    def table(self, last) -> list:
        """The layer table up to ``last``, as ``decisions_from_outputs`` reads it."""
        names = [spec.name for spec, _, _ in self.parts]
        return [{"name": s.name, "kind": s.kind, "activation": s.activation, "pool_size": s.pool_size}
                for s, _, _ in self.parts[: names.index(last) + 1]]

    def seq(self, last):
        return self.modules[: next(end for spec, _, end in self.parts if spec.name == last)]

    def __call__(self, x, stop_at=None, forced=None) -> dict:
        from tests.reference_models import ForcedMaxPool, ForcedReLU

        torch, h, out = self.torch, x.permute(0, 3, 1, 2), {}
        for spec, start, end in self.parts:
            block = list(self.modules)[start:end]
            if forced is not None and spec.name in forced["relu"] and len(block) == 2:
                mask = torch.from_numpy(forced["relu"][spec.name]).permute(0, 3, 1, 2).to(self.device)
                h = ForcedReLU.apply(block[0](h), mask, False)
            elif forced is not None and spec.name in forced["pool"]:
                h = ForcedMaxPool.apply(h, torch.from_numpy(forced["pool"][spec.name]).to(self.device), spec.pool_size)
            else:
                for module in block:
                    h = module(h)
            out[spec.name] = h.permute(0, 2, 3, 1)
            if spec.name == stop_at:
                break
        return out


# ------------------------------------------------------------------------------ the run


class Bench:
    """Models, twins and results of one run; ``row`` validates a configuration, then times it."""

    def __init__(self, args, weights, found):
        import torch

        import engine

        self.args, self.rows, self.notes, self.torch = args, [], [], torch
        self.engines = {"engine_cpu": engine.load(weights, device="cpu"), "engine_cuda": engine.load(weights, device="cuda")}
        model = self.engines["engine_cpu"]
        wl = args.workload
        deepest = max([wl["layer"], wl["filters"][0], *wl["dream"][3]], key=model.layer_index)
        self.reference = TorchTwin(model, deepest, torch.float64, "cpu")  # float64, validation only
        self.twins = {"pytorch_cpu": TorchTwin(model, deepest, torch.float32, "cpu")}
        if found["pytorch"][0]:
            self.twins["pytorch_cuda"] = TorchTwin(model, deepest, torch.float32, "cuda")
        else:
            self.note(f"PyTorch CUDA not run: {found['pytorch'][1]}")

    def note(self, text):
        self.notes.append(text)
        print(f"  note: {text}", flush=True)

    def sync(self, contender):
        if contender == "engine_cuda":
            from numba import cuda

            cuda.synchronize()
        elif contender == "pytorch_cuda":
            self.torch.cuda.synchronize()

    def attempt(self, contender, check):
        """(error, note) of a check; a contender that raises (out of memory, say) is a FAIL with the
        reason in the note, and the other contenders still run."""
        try:
            return check()
        except Exception as exc:  # noqa: BLE001
            return float("inf"), f"{LABEL[contender]} raised {type(exc).__name__}: {' '.join(str(exc).split())[:200]}"

    def row(self, section, name, flops, runs, check, reps, warmup):
        """``runs``: {contender: zero-argument callable}; ``check(contender, result)`` -> (error, note)."""
        from benchmarks.timing import interleaved, median_ms

        row = {"section": section, "name": name, "flops": flops, "ms": {}, "times_s": {}, "error": {},
               "status": {c: "n/a" for c in CONTENDERS}, "note": ""}
        timed = {}
        for contender, run in runs.items():
            err, note = self.attempt(contender, lambda: check(contender, run()))
            row["error"][contender] = err
            row["note"] = "; ".join(n for n in (row["note"], note) if n)
            row["status"][contender] = "ok" if err <= self.args.tolerance else "FAIL"
            if row["status"][contender] == "ok":
                timed[contender] = run
        row["times_s"] = interleaved(timed, reps, warmup, self.args.pause)
        row["ms"] = {c: median_ms(t) for c, t in row["times_s"].items()}
        shown = ", ".join(f"{LABEL[c]} {v:.2f} ms" for c, v in row["ms"].items() if v is not None)
        failed = [LABEL[c] for c, s in row["status"].items() if s == "FAIL"]
        print(f"  {name}: {shown}" + (f"  FAIL: {', '.join(failed)}" if failed else ""), flush=True)
        self.rows.append(row)


def host(value):
    """A result as a NumPy NHWC array: numba device arrays copied back, torch NCHW tensors permuted."""
    import numpy as np

    if hasattr(value, "copy_to_host"):
        return value.copy_to_host()
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
        return value.transpose(0, 2, 3, 1) if value.ndim == 4 else value
    return np.asarray(value)


def conv_flops(model, layer, size, batch) -> int:
    """2 x multiply-adds of the convolutions up to ``layer`` (VGG16's are all 'same', stride 1)."""
    total = 0
    for spec, shape in zip(model.layers, model.output_shapes((size, size), upto=model.layer_index(layer))):
        if spec.kind == "conv2d":
            kh, kw, c_in, c_out = spec.kernel.shape
            total += 2 * batch * shape[0] * shape[1] * kh * kw * c_in * c_out
    return total


def network_runs(bench, kind, x, g, layer):
    """{contender: callable} for one network task; CUDA callables keep inputs and results on the GPU."""
    torch, runs = bench.torch, {}
    for name in ("engine_cpu", "engine_cuda"):
        model = bench.engines[name]
        xd, gd = model.backend.asarray(x), model.backend.asarray(g)

        def run(model=model, xd=xd, gd=gd, name=name):
            trace = model.trace(xd, upto=layer)
            result = trace.output(layer) if kind == "forward" else trace.backward({layer: gd})["input"]
            bench.sync(name)
            return result  # a forward's is the model's buffer: checked before the next call

        runs[name] = run
    for name, twin in bench.twins.items():
        seq = twin.seq(layer)
        xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(twin.device)
        gt = torch.from_numpy(g.transpose(0, 3, 1, 2).copy()).to(twin.device)

        def run(seq=seq, xt=xt, gt=gt, name=name):
            if kind == "forward":
                with torch.no_grad():
                    result = seq(xt)
            else:
                xr = xt.detach().requires_grad_(True)
                seq(xr).backward(gt)
                result = xr.grad
            bench.sync(name)
            return result

        runs[name] = run
    return runs


def own_outputs(bench, contender, x, layer) -> dict:
    """Every layer output up to ``layer`` as this contender computes it (its ReLU/pool decisions)."""
    names = [t["name"] for t in bench.reference.table(layer)]
    if contender.startswith("engine"):
        return bench.engines[contender].forward(x, outputs=names)
    twin = bench.twins[contender]  # the timed modules, autograd on, as in the timed gradient
    acts = twin(bench.torch.from_numpy(x).to(twin.device).requires_grad_(True), stop_at=layer)
    return {n: a.detach().cpu().numpy() for n, a in acts.items()}


def section_network(bench):
    import numpy as np

    import engine
    from benchmarks.timing import rel_err
    from tests.reference_models import decisions_from_outputs

    args, layer, model = bench.args, bench.args.workload["layer"], bench.engines["engine_cpu"]
    torch, ref = bench.torch, bench.reference

    def reference_gradient(x, g, forced=None):
        xt = torch.from_numpy(x.astype(np.float64)).requires_grad_(True)
        (ref(xt, stop_at=layer, forced=forced)[layer] * torch.from_numpy(g.astype(np.float64))).sum().backward()
        return xt.grad.numpy()

    for size in args.sizes:
        for batch in args.batches:
            rng = np.random.default_rng([size, batch])
            x = engine.preprocess_input(rng.integers(0, 256, (batch, size, size, 3)).astype(np.float32))
            out_shape = model.output_shapes((size, size), upto=model.layer_index(layer))[-1]
            g = rng.standard_normal((batch, *out_shape)).astype(np.float32)
            with torch.no_grad():
                expected = {"forward": ref(torch.from_numpy(x.astype(np.float64)), stop_at=layer)[layer].numpy()}
            expected["forward_grad"] = reference_gradient(x, g)
            for kind, label, factor in (("forward", "forward", 1), ("forward_grad", "fwd + input grad", 2)):

                def check(contender, result, kind=kind, x=x, g=g):
                    got = host(result)
                    err = rel_err(got, expected[kind])
                    # the simulator run re-checks every gradient, to exercise this path
                    if kind == "forward" or (err <= args.tolerance and not args.simulator):
                        return err, ""
                    forced = decisions_from_outputs(ref.table(layer), own_outputs(bench, contender, x, layer))
                    followed = rel_err(got, reference_gradient(x, g, forced))
                    return min(err, followed), (f"{LABEL[contender]} gradient {err:.1e}, {followed:.1e} when the "
                                                "reference follows its own ReLU/pool decisions")

                bench.row("network", f"{label} {size}px b{batch}", conv_flops(model, layer, size, batch) * factor,
                          network_runs(bench, kind, x, g, layer), check, args.reps, args.warmup)


def section_techniques(bench):
    import numpy as np

    from benchmarks import techniques as tq
    from benchmarks.timing import interleaved, median_ms, rel_err

    args, wl = bench.args, bench.args.workload
    layer, count, size, steps = wl["filters"]
    filters, cpu_ref = list(range(count)), bench.twins["pytorch_cpu"]
    bench.note("techniques: PyTorch CPU (float32) is the one-step reference here, not timed")
    starts = tq.filter_starts(filters, size)

    def filters_runs(n):
        runs = {c: (lambda m=m: tq.engine_filters(m, layer, filters, size, n)) for c, m in bench.engines.items()}
        for c in [c for c in bench.twins if c == "pytorch_cuda"]:
            runs[c] = lambda t=bench.twins[c]: tq.filters_one_at_a_time(tq.torch_outputs(t, layer), layer, starts, filters, n, device="cuda")
        return runs

    d_size, octaves, d_steps, d_layers = wl["dream"]
    img, deepest = tq.dream_image(d_size), max(d_layers, key=bench.engines["engine_cpu"].layer_index)

    def dream_runs(n):
        setting = tq.dream_setting(octaves if n == d_steps else 1, n, layers=d_layers)
        runs = {c: (lambda m=m: tq.engine_dream(m, img, **setting)) for c, m in bench.engines.items()}
        for c in [c for c in bench.twins if c == "pytorch_cuda"]:
            runs[c] = lambda t=bench.twins[c]: tq.dream_reference(tq.torch_outputs(t, deepest), img, **setting, device="cuda")
        return runs, (lambda: tq.dream_reference(tq.torch_outputs(cpu_ref, deepest), img, **setting))

    jobs = [(f"filters {layer} x{count} {size}px {steps} steps", filters_runs, steps, starts,
             lambda: tq.filters_one_at_a_time(tq.torch_outputs(cpu_ref, layer), layer, starts, filters, 1)),
            (f"dream {d_size}px {octaves} octaves x {d_steps} steps", lambda n: dream_runs(n)[0], d_steps, img,
             dream_runs(1)[1])]
    for label, make, n_steps, start, reference_step in jobs:
        start = np.asarray(start, np.float64)
        reference = reference_step() - start  # one step's change, PyTorch float32 on the CPU
        row = {"section": "techniques", "name": label, "flops": None, "ms": {}, "times_s": {}, "error": {},
               "status": {c: "n/a" for c in CONTENDERS}, "note": ""}
        one, whole, ends, notes = make(1), make(n_steps), {}, []

        def gate(c):
            changed = one[c]()
            bench.sync(c)
            ends[c] = changed if n_steps == 1 else whole[c]()  # a whole run: warm-up, and the drift
            return rel_err(changed - start, reference), ""

        for c in one:
            row["error"][c], failure = bench.attempt(c, lambda: gate(c))
            row["status"][c] = "ok" if row["error"][c] <= args.tolerance else "FAIL"
            notes += [failure] if failure else []
        drift = {c: rel_err(ends[c] - start, ends["engine_cpu"] - start) for c in ends if c != "engine_cpu" and "engine_cpu" in ends}
        notes.append("end-to-end change vs engine CPU's (not gated): " + ", ".join(f"{LABEL[c]} {v:.1e}" for c, v in drift.items()))
        row["note"] = "; ".join(notes)

        def synced(c):
            return lambda: (whole[c](), bench.sync(c))

        timed = {c: synced(c) for c in whole if row["status"][c] == "ok"}
        row["times_s"] = interleaved(timed, args.technique_reps, 0, args.pause)
        row["ms"] = {c: median_ms(t) for c, t in row["times_s"].items()}
        print(f"  {label}: " + ", ".join(f"{LABEL[c]} {v:.0f} ms" for c, v in row["ms"].items()) + f"; {row['note']}", flush=True)
        bench.rows.append(row)
