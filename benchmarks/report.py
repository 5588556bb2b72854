"""Machine description, markdown tables, the JSON record and a ratio bar chart (PIL only).

A *row* is one timed configuration::

    {"section": "network", "name": "forward 224px b1", "flops": 30.9e9 or None,
     "ms": {contender: median ms or None}, "times_s": {contender: [raw seconds]},
     "error": {contender: relative error vs the reference or None},
     "status": {contender: "ok" | "FAIL" | "n/a" | "skipped"}, "note": str}

Ratios are engine time / other time: below 1 the engine is faster.
"""

import datetime
import json
import math
import os
import platform
import subprocess
import sys

from benchmarks.frameworks import NAMES
from benchmarks.targets import table as targets_table

COLUMNS = ["engine", "pytorch", "onnxruntime", "keras"]
EXTRA_COLUMNS = ["pytorch_batched"]  # shown only when a row has them (filters: PyTorch on a batch)
SHORT = {"engine": "engine", "pytorch": "PyTorch", "onnxruntime": "ORT", "keras": "Keras",
         "pytorch_batched": "PyTorch batched"}
RATIOS = [("pytorch", "engine/PyTorch"), ("onnxruntime", "engine/ORT")]


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(module):
    try:
        return __import__(module).__version__
    except Exception:  # noqa: BLE001 - not installed, or broken: say so rather than fail
        return None


def machine_info(threads: dict) -> dict:
    import numba
    import numpy as np

    env_keys = ["OPENBLAS_CORETYPE", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS", "OMP_NUM_THREADS",
                "MKL_NUM_THREADS", "NUMBA_THREADING_LAYER", "KERAS_BACKEND"]
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cores_logical": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_average": load,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "versions": {
            "numpy": np.__version__,
            "numba": numba.__version__,
            "numba_threading_layer": _threading_layer(),
            "torch": _version("torch"),
            "onnxruntime": _version("onnxruntime"),
            "onnx": _version("onnx"),
            "keras": _version("keras") if os.environ.get("KERAS_BACKEND") == "torch" else None,
        },
        "environment": {k: os.environ.get(k) for k in env_keys},
        "threads": threads,
        "git_commit": commit,
    }


def _threading_layer():
    import numba

    try:
        return numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet
        return None


def _ms(v):
    return "—" if v is None else (f"{v:.1f}" if v >= 10 else f"{v:.2f}")


def ratio(row, other):
    a, b = row["ms"].get("engine"), row["ms"].get(other)
    return a / b if a and b else None


def _cell(row, name):
    status = row["status"].get(name, "n/a")
    if status == "FAIL":
        return f"FAIL ({row['error'][name]:.1e})"
    if status != "ok":
        return "—"
    return _ms(row["ms"].get(name))


def timing_table(rows) -> str:
    columns = COLUMNS + [c for c in EXTRA_COLUMNS if any(c in row["status"] for row in rows)]
    head = ["configuration"] + [f"{SHORT[c]} ms" for c in columns] + [r[1] for r in RATIOS]
    head += ["engine GFLOP/s", "max rel. err"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for row in rows:
        cells = [row["name"]] + [_cell(row, c) for c in columns]
        cells += ["—" if ratio(row, c) is None else f"{ratio(row, c):.2f}" for c, _ in RATIOS]
        eng = row["ms"].get("engine")
        cells.append(f"{row['flops'] / eng / 1e6:.1f}" if row.get("flops") and eng else "—")
        errors = [e for e in row["error"].values() if e is not None]
        cells.append(f"{max(errors):.1e}" if errors else "—")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def startup_table(rows) -> str:
    lines = ["| contender | start-up to first call s | phases (s) | note |", "|---|---:|---|---|"]
    for r in rows:
        phases = ", ".join(f"{k} {v:.2f}" for k, v in r.get("phases", {}).items())
        lines.append(f"| {r['name']} | {r['seconds']:.2f} | {phases} | {r.get('note', '')} |")
    return "\n".join(lines)


def memory_table(rows) -> str:
    lines = ["| contender | work | peak RSS MiB (VmHWM) | peak after loading MiB | note |", "|---|---|---:|---:|---|"]
    for r in rows:
        lines.append(
            f"| {NAMES.get(r['contender'], r['contender'])} | {r['work']} | {r['peak_mib']:.0f} | "
            f"{r['loaded_mib']:.0f} | {r.get('note', '')} |"
        )
    return "\n".join(lines)


def markdown(results) -> str:
    m = results["machine"]
    out = [
        "# convscope benchmark",
        "",
        f"{m['date']} · {m['cpu']} · {m['cores_usable']} usable cores · threads {m['threads']} · "
        f"OPENBLAS_CORETYPE={m['environment'].get('OPENBLAS_CORETYPE')} · numpy "
        f"{m['versions']['numpy']}, numba {m['versions']['numba']}, torch {m['versions']['torch']}, "
        f"onnxruntime {m['versions']['onnxruntime']}, keras {m['versions']['keras']}",
        "",
        f"Medians of {results['settings']['reps']} interleaved repetitions after warm-up "
        f"({results['settings']['technique_reps']} for techniques); ratios are "
        "engine / other (below 1: the engine is faster). Each contender was validated against "
        f"the reference first and is not timed (FAIL) above a relative error of {results['settings']['tolerance']:g}.",
    ]
    if results.get("targets"):
        out += ["", "## Issue 16 targets (engine / other: met when at most the bound)", "",
                targets_table(results["targets"])]
    titles = {"network": "VGG16 conv stack", "layers": "Conv layers alone", "techniques": "Techniques end to end"}
    for section, title in titles.items():
        rows = [r for r in results["rows"] if r["section"] == section]
        if rows:
            out += ["", f"## {title}", "", timing_table(rows)]
            notes = [f"- {r['name']}: {r['note']}" for r in rows if r.get("note")]
            out += [""] + notes if notes else []
    if results.get("startup"):
        out += ["", "## Start-up (fresh processes)", "", startup_table(results["startup"])]
    if results.get("memory"):
        out += ["", "## Peak memory (one process per contender)", "", memory_table(results["memory"])]
    if results.get("notes"):
        out += ["", "## Notes", ""] + [f"- {n}" for n in results["notes"]]
    return "\n".join(out) + "\n"


def write_json(results, path):
    tmp = str(path) + ".tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=1, default=str)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------ the chart


def _font(size):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def ratio_chart(rows, path, title="engine time / other time (below 1: engine faster)"):
    """Horizontal bars of engine/PyTorch and engine/ORT per configuration on a log2 axis."""
    from PIL import Image, ImageDraw

    items = [(r["name"], [(label, ratio(r, c)) for c, label in RATIOS if ratio(r, c) is not None]) for r in rows]
    items = [(name, bars) for name, bars in items if bars]
    font, small = _font(15), _font(13)
    colours = {"engine/PyTorch": (66, 113, 196), "engine/ORT": (237, 125, 49)}
    bar_h, gap, left, right, top = 14, 10, 300, 90, 60
    height = top + sum(len(b) * bar_h + gap for _, b in items) + 50
    width = 1000
    img = Image.new("RGB", (width, max(height, 140)), "white")
    draw = ImageDraw.Draw(img)
    draw.text((10, 10), title, fill="black", font=font)
    x = 10
    for label, colour in colours.items():
        draw.rectangle([x, 36, x + 14, 50], fill=colour)
        draw.text((x + 20, 35), label, fill="black", font=small)
        x += 160
    if not items:
        draw.text((10, 80), "no ratios to show (only one contender was timed)", fill="black", font=small)
        img.save(path)
        return path
    # log2 axis: a ratio and its inverse are equally far from 1; bars grow from the line at 1
    values = [v for _, bars in items for _, v in bars]
    lo = math.floor(math.log2(min(min(values), 0.5)))
    hi = math.ceil(math.log2(max(max(values), 2.0)))
    scale = (width - left - right) / (hi - lo)
    pos = lambda v: left + (math.log2(v) - lo) * scale  # noqa: E731
    axis_bottom = height - 40
    for e in range(lo, hi + 1):
        xt = pos(2.0**e)
        draw.line([xt, top - 4, xt, axis_bottom], fill=(225, 225, 225))
        label = f"{2.0 ** e:g}"
        draw.text((xt - 4 * len(label), axis_bottom + 4), label, fill="black", font=small)
    y = top
    for name, bars in items:
        draw.text((10, y + (len(bars) * bar_h) / 2 - 8), name, fill="black", font=small)
        for label, v in bars:
            x0, x1 = sorted((pos(1.0), pos(v)))
            draw.rectangle([x0, y, max(x1, x0 + 1), y + bar_h - 2], fill=colours[label])
            draw.text((max(pos(v), pos(1.0)) + 4, y - 1), f"{v:.2f}", fill="black", font=small)
            y += bar_h
        y += gap
    one = pos(1.0)
    draw.line([one, top - 4, one, axis_bottom], fill=(200, 0, 0), width=2)
    img.save(path)
    return path
