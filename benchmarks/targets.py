"""Issue 16's targets, read off one run's rows and memory records: each ratio, its bound, met or not.

A target is met when engine / other <= bound (times: medians of the interleaved repetitions;
memory: peak RSS of one process each). A run at another scale than the issue's (``--quick``, or
other ``--filters``/``--dream``/``--sizes``) still gets the table, each row saying that its
configuration is not the issue's; ``python benchmarks/run.py --targets`` runs the issue's.
"""

# The issue's configurations (--targets): filters LAYER, COUNT, SIZE, STEPS; dream SIZE, OCTAVES,
# STEPS; the network rows at batch 1; the memory row's size and batch
FILTERS = ("block3_conv1", 200, 128, 20)
DREAM = (512, 4, 20)
GRAD_SIZES = (224, 128)
MEMORY = (224, 8)


def _timed(rows, section, prefix):
    return next((r for r in rows if r["section"] == section and r["name"].startswith(prefix)), None)


def _time_target(row, other, bound, label, issue_scale):
    a = row["ms"].get("engine") if row else None
    b = row["ms"].get(other) if row else None
    return {"target": label, "configuration": row["name"] if row else "not run", "engine": a, "other": b,
            "unit": "ms", "ratio": a / b if a and b else None, "bound": bound, "issue_scale": issue_scale}


def _memory(records, prefix):
    by = {r["contender"]: r["peak_mib"] for r in records if r["work"].startswith(prefix)}
    work = next((r["work"] for r in records if r["work"].startswith(prefix)), "not run")
    return by.get("engine"), by.get("pytorch"), work


def targets(results) -> list:
    """One dict per target (see ``table``); ratio None when a side was not run or failed."""
    rows, settings, memory = results["rows"], results["settings"], results.get("memory", [])
    out = []
    dream = _timed(rows, "techniques", "dream ")
    at_scale = tuple(settings.get("dream") or ()) == DREAM
    out.append(_time_target(dream, "keras", 1 / 3, "dream: engine / Keras example", at_scale))
    out.append(_time_target(dream, "pytorch", 1 / 2, "dream: engine / PyTorch, same algorithm", at_scale))
    filters = _timed(rows, "techniques", "filters ")
    at_scale = tuple((settings.get("filters") or ())[:4]) == FILTERS
    out.append(_time_target(filters, "keras", 1 / 3, "filters: engine / Keras example (one at a time)", at_scale))
    out.append(_time_target(filters, "pytorch_batched", 1 / 2, "filters: engine / PyTorch batched", at_scale))
    for size in GRAD_SIZES:
        row = _timed(rows, "network", f"fwd + input grad {size}px b1")
        out.append(_time_target(row, "pytorch", 0.6, f"fwd + input grad {size} px b1: engine / PyTorch", row is not None))
    at_scale = (settings.get("memory_size"), settings.get("memory_batch")) == MEMORY
    a, b, work = _memory(memory, "forward + forward_grad")
    out.append({"target": "peak memory, fwd + input grad: engine / PyTorch", "configuration": work, "engine": a,
                "other": b, "unit": "MiB", "ratio": a / b if a and b else None, "bound": 1.0, "issue_scale": at_scale})
    a, b, work = _memory(memory, "dream ")
    dream_size = tuple(settings.get("dream") or ())[:2] == DREAM[:2]
    out.append({"target": "peak memory, dream: engine / PyTorch", "configuration": work, "engine": a, "other": b,
                "unit": "MiB", "ratio": a / b if a and b else None, "bound": 1.0, "issue_scale": dream_size})
    for t in out:
        t["met"] = None if t["ratio"] is None else t["ratio"] <= t["bound"]
    return out


def _num(v, unit):
    if v is None:
        return "—"
    return f"{v:.0f} {unit}" if v >= 100 else f"{v:.1f} {unit}"


def table(rows) -> str:
    lines = ["| target | configuration | engine | other | ratio | bound | met |", "|---|---|---:|---:|---:|---:|---|"]
    for t in rows:
        ratio = "—" if t["ratio"] is None else f"{t['ratio']:.2f}"
        met = "not measured" if t["met"] is None else ("**met**" if t["met"] else "missed")
        config = t["configuration"]
        if not t["issue_scale"] and config != "not run":
            config += " (not the issue's scale)"
        lines.append(f"| {t['target']} | {config} | {_num(t['engine'], t['unit'])} | {_num(t['other'], t['unit'])} | "
                     f"{ratio} | {t['bound']:.2f} | {met} |")
    return "\n".join(lines)
