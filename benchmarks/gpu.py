"""CPU vs GPU: convscope's engine on its CPU and CUDA backends against PyTorch on the same devices.

    python benchmarks/gpu.py                  # on a machine with an NVIDIA GPU
    python benchmarks/gpu.py --detect         # only say which GPU, if any, each side can use
    python benchmarks/gpu.py --simulator      # no GPU: check the harness under Numba's simulator

What it validates, then times (interleaved medians, ``benchmarks/timing.py``):

* network     the VGG16 conv stack to block5_pool, forward and forward + input gradient
              d sum(block5_pool * g) / dx, for --sizes x --batches (224,128 x 1,8): engine CPU,
              engine CUDA, PyTorch CPU and PyTorch CUDA (cuDNN, TF32 off, cudnn.benchmark on).
              CUDA rows are device-resident: the input is on the GPU before the timed call and the
              result stays there (engine: ``Model.trace`` on a device array; ``Model.forward`` /
              ``input_gradient`` would add a host copy at each end); every GPU call ends with a
              synchronise. CPU rows run the public API on host arrays.
* techniques  filters (block3_conv1, 32 filters in one batch, 128 px, 20 steps) and DeepDream
              (512 px, 4 octaves x 20 steps) end to end through the engine's host API on CPU and
              CUDA, and the Keras examples' algorithms in PyTorch on CUDA (benchmarks/techniques.py).

Validation comes first; a result whose relative error exceeds --tolerance is FAIL and not timed.
Network results are compared with a float64 PyTorch twin of the loaded network on the CPU; an
input gradient over the tolerance is re-checked against that twin following the contender's own
ReLU/max-pool decisions (``tests.reference_models.decisions_from_outputs``), which tells a float32
near-tie flip from a bug. Techniques are gated on one ascent step vs PyTorch float32 on the CPU
(whole runs drift apart between any two correct float32 implementations; that drift, vs the
engine CPU's run, is reported, not gated). Ratios: engine CUDA / PyTorch CUDA (target: <= 2 at
224 px batch 8) and engine CUDA / engine CPU. Output: benchmark.md and benchmark.json in --out.

Without a usable GPU it prints one line saying so and what it would have measured, and exits 0
(1 with --require-gpu); the simulator is never timed unless asked. --simulator sets
NUMBA_ENABLE_CUDASIM=1 before numba loads and runs every part of the harness (the near-tie
re-check on every gradient too), its timings meaningless, on a 2-convolution network with VGG16's
layer names at 8 px: the simulator runs each CUDA thread as a Python thread (~3e5 multiply-adds/s
here), so VGG16 itself would take ~20 min per forward pass even at 32 px.
"""

import argparse
import os
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.gpu_sections import CONTENDERS, LABEL  # noqa: E402  (neither loads numpy)
from benchmarks.run import CACHE, _ints, set_thread_environment, weights_file  # noqa: E402

RATIOS = (("engine_cuda", "pytorch_cuda", "engine CUDA / PyTorch CUDA"),
          ("engine_cuda", "engine_cpu", "engine CUDA / engine CPU"))
TARGET = 2.0  # engine CUDA at most twice PyTorch/cuDNN's time, VGG16 conv stack, 224 px batch 8
VGG16 = dict(layer="block5_pool", filters=("block3_conv1", 32, 128, 20),
             dream=(512, 4, 20, {"block4_conv3": 1.0, "block5_conv1": 0.5}))
SIMULATED = dict(layer="block2_pool", filters=("block1_conv1", 2, 8, 1), dream=(8, 1, 1, {"block1_conv1": 1.0}))
SIM_LAYERS = [  # the --simulator network: VGG16's first two blocks, one 2-channel conv each
    dict(cls="Conv2D", name="block1_conv1", filters=2, kernel_size=3, padding="same", activation="relu"),
    dict(cls="MaxPooling2D", name="block1_pool", pool_size=2),
    dict(cls="Conv2D", name="block2_conv1", filters=2, kernel_size=3, padding="same", activation="relu"),
    dict(cls="MaxPooling2D", name="block2_pool", pool_size=2),
]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--simulator", action="store_true", help="Numba's CUDA simulator, tiny sizes (harness check)")
    p.add_argument("--require-gpu", action="store_true", help="exit 1 when no GPU is usable")
    p.add_argument("--detect", action="store_true", help="only report the GPU each side can use")
    p.add_argument("--only", default="network,techniques", help="sections: network, techniques")
    p.add_argument("--sizes", type=_ints, default=None, help="image sizes (default 224,128)")
    p.add_argument("--batches", type=_ints, default=None, help="batch sizes (default 1,8)")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions (default 5)")
    p.add_argument("--technique-reps", type=int, default=None, help="timed technique runs (default 3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls before timing (default 1)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for every contender")
    p.add_argument("--weights", type=pathlib.Path, default=None, help="a VGG16 h5 file")
    p.add_argument("--out", type=pathlib.Path, default=None, help="default benchmarks/results/gpu/")
    p.add_argument("--pause", type=float, default=0.02, help="seconds between two timed calls")
    p.add_argument("--tolerance", type=float, default=1e-4, help="largest relative error timed")
    args = p.parse_args(argv)
    sim = args.simulator
    if sim and args.weights is not None:
        p.error("--simulator runs its own 2-convolution network: drop --weights")
    args.sections = [s for s in ("network", "techniques") if s in args.only.split(",")]
    args.sizes = args.sizes or ([8] if sim else [224, 128])
    args.batches = args.batches or ([1] if sim else [1, 8])
    args.reps = args.reps or (1 if sim else 5)
    args.technique_reps = args.technique_reps or (1 if sim else 3)
    args.warmup = args.warmup if args.warmup is not None else (0 if sim else 1)
    args.threads = args.threads or len(os.sched_getaffinity(0))
    args.out = args.out or (CACHE / "gpu_simulator" if sim else ROOT / "benchmarks" / "results" / "gpu")
    args.workload = SIMULATED if sim else VGG16
    return args


# ------------------------------------------------------------------------------ detection


def detect(simulator: bool) -> dict:
    """{"engine": (usable, why not), "pytorch": (usable, why not)}; the simulator counts only when asked."""
    from engine.backend import cuda_status

    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" and not simulator:
        found = {"engine": (False, "NUMBA_ENABLE_CUDASIM=1 is set, and the simulator is never timed "
                                   "(unset it, or pass --simulator to check the harness)")}
    else:
        found = {"engine": cuda_status()}
    try:
        import torch
    except ImportError:
        found["pytorch"] = (False, "PyTorch is not installed")
    else:
        usable = not simulator and torch.cuda.is_available()
        why = "" if usable else (f"PyTorch {torch.__version__}: a CPU-only build" if torch.version.cuda is None
                                 else f"PyTorch {torch.__version__}: no CUDA device")
        found["pytorch"] = (usable, why)
    return found


def no_gpu_line(found, args) -> str:
    sizes, batches = (", ".join(map(str, v)) for v in (args.sizes, args.batches))
    layer, count, size, _ = args.workload["filters"]
    d_size, octaves = args.workload["dream"][:2]
    return (f"no GPU: convscope: {found['engine'][1]}; {found['pytorch'][1] or 'PyTorch: CUDA available'}. "
            f"Nothing was measured; with a GPU this validates and times VGG16 forward and forward + input "
            f"gradient ({sizes} px x batch {batches}), filters ({layer}, {count} filters, {size} px) and dream "
            f"({d_size} px, {octaves} octaves) end to end, on the engine's CPU and CUDA backends against "
            f"PyTorch on CPU and CUDA")


def gpu_info(torch_cuda: bool) -> dict:
    """The GPU, driver and CUDA versions as numba-cuda, nvidia-smi and PyTorch report them."""
    info = {}

    def attempt(key, fn):
        try:
            info[key] = fn()
        except Exception as exc:  # noqa: BLE001 - report what is unknown, do not fail the run
            info[key] = f"unknown ({type(exc).__name__})"

    from numba import cuda

    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return {"name": "none: Numba's CUDA simulator"}
    name = lambda: cuda.get_current_device().name  # noqa: E731
    attempt("name", lambda: name().decode() if isinstance(name(), bytes) else str(name()))
    attempt("compute_capability", lambda: ".".join(map(str, cuda.get_current_device().compute_capability)))
    attempt("cuda_driver_api", lambda: ".".join(map(str, cuda.cudadrv.driver.driver.get_version())))
    attempt("cuda_runtime_numba", lambda: ".".join(map(str, cuda.runtime.get_version())))
    attempt("nvidia_smi", lambda: subprocess.run(
        ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
        capture_output=True, text=True, timeout=20, check=True).stdout.strip())
    attempt("numba_cuda", lambda: __import__("numba_cuda").__version__)
    if torch_cuda:
        import torch

        info["torch_device"] = torch.cuda.get_device_name(0)
        info["torch_cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
        info["torch_tf32"] = {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32}
        info["cudnn_benchmark"] = torch.backends.cudnn.benchmark
    return info


# ------------------------------------------------------------------------------ report


def ratio(row, a, b):
    x, y = row["ms"].get(a), row["ms"].get(b)
    return x / y if x and y else None


def _ms(row, c):
    if row["status"].get(c) == "FAIL":
        return f"FAIL ({row['error'][c]:.1e})"
    v = row["ms"].get(c)
    return "—" if v is None else (f"{v:.1f}" if v >= 10 else f"{v:.2f}")


def table(rows) -> str:
    head = ["configuration"] + [f"{LABEL[c]} ms" for c in CONTENDERS] + [r[2] for r in RATIOS]
    head += ["engine CUDA GFLOP/s", "max rel. err"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for row in rows:
        cells = [row["name"]] + [_ms(row, c) for c in CONTENDERS]
        cells += ["—" if ratio(row, a, b) is None else f"{ratio(row, a, b):.2f}" for a, b, _ in RATIOS]
        gpu = row["ms"].get("engine_cuda")
        cells.append(f"{row['flops'] / gpu / 1e6:.0f}" if row.get("flops") and gpu else "—")
        errors = [e for e in row["error"].values() if e is not None]
        cells.append(f"{max(errors):.1e}" if errors else "—")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def target_lines(rows, simulator) -> list:
    out = []
    for row in rows:
        if row["section"] == "network" and row["name"].endswith("224px b8"):
            r = ratio(row, "engine_cuda", "pytorch_cuda")
            verdict = "not measured" if r is None else f"{r:.2f}x, {'met' if r <= TARGET else 'missed'}"
            out.append(f"- {row['name']}: engine CUDA / PyTorch CUDA {verdict} (target <= {TARGET:g}x)")
    if simulator:
        out.append("- simulator run: no target applies")
    return out or ["- 224 px batch 8 was not run"]


def markdown(results) -> str:
    m, g, s = results["machine"], results["gpu"], results["settings"]
    sim = s["simulator"]
    out = ["# convscope CPU vs GPU", ""]
    if sim:
        out += ["**Numba CUDA simulator run on a 2-convolution network: every timing below is meaningless; "
                "this only checks that the harness works.**", ""]
    gpu = g["name"] if sim else (f"{g['name']} (compute capability {g['compute_capability']}; nvidia-smi: "
                                 f"{g['nvidia_smi']}; CUDA driver API {g['cuda_driver_api']}, numba-cuda {g['numba_cuda']})")
    torch = f"PyTorch {m['versions']['torch']}" + (
        f" (CUDA {g['torch_cuda']}, cuDNN {g['cudnn']}, TF32 allowed: {g['torch_tf32']}, cudnn.benchmark "
        f"{g['cudnn_benchmark']})" if "torch_cuda" in g else " (no CUDA)")
    out += [f"{m['date']} · GPU {gpu} · {torch} · CPU {m['cpu']}, {s['threads']} threads · numpy "
            f"{m['versions']['numpy']}, numba {m['versions']['numba']}",
            "", f"Medians of {s['reps']} interleaved repetitions after {s['warmup']} warm-up call(s) "
            f"({s['technique_reps']} whole runs for techniques). Each result was validated first and is not "
            f"timed (FAIL) above a relative error of {s['tolerance']:g}. CUDA network rows are "
            "device-resident (no host copies in the timed call); every GPU call ends with a synchronise."]
    for section, title in (("network", "Conv stack"), ("techniques", "Techniques end to end")):
        rows = [r for r in results["rows"] if r["section"] == section]
        if rows:
            out += ["", f"## {title}", "", table(rows)]
            notes = [f"- {r['name']}: {r['note']}" for r in rows if r.get("note")]
            out += [""] + notes if notes else []
    out += ["", "## Target", ""] + target_lines(results["rows"], sim)
    if results["notes"]:
        out += ["", "## Notes", ""] + [f"- {n}" for n in results["notes"]]
    return "\n".join(out) + "\n"


def main(argv=None):
    args = parse_args(argv)
    if args.simulator:
        if "numba" in sys.modules and os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
            raise SystemExit("error: --simulator must be set before numba is imported")
        os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
    if "numpy" not in sys.modules:
        keras_backend = os.environ.get("KERAS_BACKEND")
        set_thread_environment(args.threads)
        if keras_backend is None:  # Keras is no contender here: report.machine_info must not import it
            del os.environ["KERAS_BACKEND"]
    import engine  # noqa: F401  (before numpy: it tunes the BLAS threads)

    found = detect(args.simulator)
    if not found["engine"][0]:
        line = no_gpu_line(found, args)
        print(f"error: {line}" if args.require_gpu else line, file=sys.stderr if args.require_gpu else sys.stdout)
        return 1 if args.require_gpu else 0
    if args.detect:
        print(f"GPU: {gpu_info(False).get('name')} (engine); {found['pytorch'][1] or 'PyTorch: CUDA available'}")
        return 0
    if found["pytorch"][1] == "PyTorch is not installed":
        print('error: benchmarks/gpu.py needs PyTorch, its reference: pip install -e ".[dev]"', file=sys.stderr)
        return 1
    from benchmarks import frameworks as fw
    from benchmarks import report
    from benchmarks.gpu_sections import Bench, section_network, section_techniques

    if found["pytorch"][0]:
        import torch

        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest algorithms
    started = time.perf_counter()
    if args.simulator:
        weights = CACHE / "gpu_simulator_net.h5"
        if not weights.is_file():
            from tests.synthetic_layouts import write_keras2_model

            CACHE.mkdir(parents=True, exist_ok=True)
            write_keras2_model(weights.with_suffix(".h5.tmp"), SIM_LAYERS, (8, 8, 3))
            os.replace(weights.with_suffix(".h5.tmp"), weights)
    else:
        weights = weights_file(args)
    bench = Bench(args, weights, found)
    if args.simulator:
        bench.note("Numba CUDA simulator on a 2-convolution network: timings meaningless, harness check only")
    threads = fw.set_threads(args.threads)
    for section in args.sections:
        print(f"== {section}", flush=True)
        {"network": section_network, "techniques": section_techniques}[section](bench)
    results = {"machine": report.machine_info(threads), "gpu": gpu_info(found["pytorch"][0]),
               "settings": {k: (str(v) if isinstance(v, pathlib.Path) else v) for k, v in vars(args).items()},
               "rows": bench.rows, "notes": bench.notes, "elapsed_s": time.perf_counter() - started}
    results["settings"].update(weights=str(weights), engine_conv=bench.engines["engine_cpu"].conv)
    args.out.mkdir(parents=True, exist_ok=True)
    text = markdown(results)
    (args.out / "benchmark.md").write_text(text)
    report.write_json(results, args.out / "benchmark.json")
    print("\n" + text + f"\nwrote {args.out}/benchmark.md and benchmark.json in {results['elapsed_s']:.0f} s")
    failed = [r["name"] for r in bench.rows if "FAIL" in r["status"].values()]
    if failed:
        print(f"FAILED validation: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
