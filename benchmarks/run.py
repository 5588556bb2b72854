"""Validate, then time, convscope's CPU engine against PyTorch, ONNX Runtime and Keras 3; report.

    python benchmarks/run.py                      # everything (~10 min on a quiet 2-core machine)
    python benchmarks/run.py --quick              # tiny sizes and reps: checks the harness (~1 min)
    python benchmarks/run.py --targets            # issue 16's targets at the issue's scale (~20 min)
    python benchmarks/run.py --only network --sizes 224 --batches 1,8 --reps 7 --threads 2

Sections (``--only`` takes a comma-separated list):

* network     the VGG16 conv stack, forward (to block5_pool) and forward + input gradient
              (d sum(block5_pool * g) / dx), for every --sizes x --batches
* layers      each of the 13 conv layers alone, forward (bias + ReLU) and backward-input
* techniques  filters and DeepDream end to end (engine.viz.filters / engine.viz.dream, batched)
              vs the same algorithm in PyTorch and Keras, one filter at a time, and (filters) in
              PyTorch on the engine's batch; skipped when the engine module does not exist
* startup     fresh processes: Numba's first-run compile time (an empty NUMBA_CACHE_DIR) and the
              cached start-up time (process start to first forward done), per contender
* memory      peak RSS (ru_maxrss) of one process per contender doing forward + input gradient

Every timed configuration is first validated: each contender's result against PyTorch
(``tests.reference_models``; the engine's NumPy reference backend when torch is missing) on the
same weight file and input. Above a relative error of 1e-4 the contender is marked FAIL and not
timed. Contenders run interleaved in one process with equal thread counts; a missing framework
is skipped with a note. Issue 16's targets are read off the rows (``targets.py``; ``--targets``
runs the issue's configurations). Output: a markdown table (printed and saved), a JSON file with every raw
time and the machine, and a PNG bar chart of the ratios, in --out (default benchmarks/results/).
Weights: synthetic official-layout VGG16 files (``tests.synthetic``) cached in benchmarks/.cache/,
or --weights FILE (a notop or full official VGG16 file).
"""

import argparse
import os
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
SECTIONS = ("network", "layers", "techniques", "startup", "memory")
CACHE = ROOT / "benchmarks" / ".cache"


def _ints(text):
    return [int(v) for v in str(text).split(",") if v.strip()]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes and reps (harness check)")
    p.add_argument("--targets", action="store_true",
                   help="issue 16's configurations: sections network, techniques and memory; filters "
                        "block3_conv1,200,128,20,32; dream 512,4,20; sizes 224,128; batches 1,8; one "
                        "repetition of each technique (options given as well win; with --quick, "
                        "the same sections at --quick's scale)")
    p.add_argument("--sizes", type=_ints, default=None, help="image sizes, e.g. 224,128")
    p.add_argument("--batches", type=_ints, default=None, help="batch sizes, e.g. 1,8")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions per configuration")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls before timing")
    p.add_argument("--threads", type=int, default=None, help="threads for every contender")
    p.add_argument("--only", default=",".join(SECTIONS), help=f"sections: {', '.join(SECTIONS)}")
    p.add_argument("--contenders", default="engine,pytorch,onnxruntime,keras")
    p.add_argument("--out", type=pathlib.Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--weights", type=pathlib.Path, default=None, help="a VGG16 h5 file")
    p.add_argument("--layer-size", type=int, default=None, help="image size for the layers section")
    p.add_argument("--pause", type=float, default=0.02, help="seconds between two timed calls")
    p.add_argument("--tolerance", type=float, default=1e-4, help="largest relative error timed")
    p.add_argument("--filters", default=None,
                   help="techniques: LAYER,COUNT,SIZE,STEPS[,K]; the frameworks run the first K filters "
                        "one at a time and their time is scaled to COUNT (e.g. block3_conv1,200,128,20,20)")
    p.add_argument("--dream", default=None, help="techniques: SIZE,OCTAVES,STEPS (e.g. 512,4,20)")
    p.add_argument("--technique-reps", type=int, default=None, help="timed repetitions of each technique")
    args = p.parse_args(argv)
    if args.targets:
        if str(ROOT) not in sys.path:
            sys.path.insert(0, str(ROOT))
        from benchmarks import targets  # no NumPy: thread settings are still to be made

        given = set(argv if argv is not None else sys.argv[1:])
        layer, count, size, steps = targets.FILTERS
        if not any(a.startswith("--only") for a in given):
            args.only = "network,techniques,memory"
        if not args.quick:  # --targets --quick: the same sections and table at --quick's scale
            args.filters = args.filters or f"{layer},{count},{size},{steps},32"
            args.dream = args.dream or ",".join(map(str, targets.DREAM))
            args.sizes = args.sizes or list(targets.GRAD_SIZES)
            args.batches = args.batches or [1, targets.MEMORY[1]]
            args.technique_reps = args.technique_reps or 1
    unknown = set(args.only.split(",")) - set(SECTIONS)
    if unknown:
        p.error(f"unknown section(s) {', '.join(sorted(unknown))}: use {', '.join(SECTIONS)}")
    quick = args.quick
    args.sizes = args.sizes or ([32] if quick else [224, 128])
    args.batches = args.batches or ([1] if quick else [1, 8])
    args.reps = args.reps or (2 if quick else 5)
    args.layer_size = args.layer_size or (32 if quick else 224)
    args.threads = args.threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    args.sections = [s for s in SECTIONS if s in args.only.split(",")]
    args.contenders = [c for c in args.contenders.split(",") if c]
    # techniques: (filters: layer, count, size, steps), (dream: size, octaves, steps)
    if args.filters:
        layer, *numbers = args.filters.split(",")
        if len(numbers) not in (3, 4) or not all(n.isdigit() and int(n) > 0 for n in numbers):
            p.error(f"--filters {args.filters!r}: expected LAYER,COUNT,SIZE,STEPS[,K] with positive numbers")
        count, size, steps = map(int, numbers[:3])
        args.filters = (layer, count, size, steps, min(count, int(numbers[3]) if len(numbers) == 4 else count))
    else:
        args.filters = ("block3_conv1", 2, 32, 2, 2) if quick else ("block5_conv1", 4, 128, 10, 4)
    if args.dream:
        numbers = args.dream.split(",")
        if len(numbers) != 3 or not all(n.isdigit() and int(n) > 0 for n in numbers):
            p.error(f"--dream {args.dream!r}: expected SIZE,OCTAVES,STEPS with positive numbers")
        args.dream = tuple(map(int, numbers))
    else:
        args.dream = (96, 1, 1) if quick else (224, 3, 10)
    args.technique_reps = args.technique_reps or (1 if quick else 3)
    args.startup_size = 32 if quick else 224
    args.memory_size, args.memory_batch = max(args.sizes), max(args.batches)
    return args


def set_thread_environment(n):
    """Thread counts must be in the environment before NumPy / Numba / torch load their pools."""
    for var in ("NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)
    os.environ.setdefault("KERAS_BACKEND", "torch")


def weights_file(args):
    if args.weights is not None:
        if not args.weights.is_file():
            raise SystemExit(f"error: weights file {args.weights} does not exist")
        return args.weights
    from tests.synthetic import write_vgg16_official

    path = CACHE / "vgg16_synthetic_notop.h5"
    if not path.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".h5.tmp")
        write_vgg16_official(tmp, include_top=False, seed=0)
        os.replace(tmp, path)
    return path


def main(argv=None):
    args = parse_args(argv)
    if "numpy" not in sys.modules:
        set_thread_environment(args.threads)
    else:
        os.environ.setdefault("KERAS_BACKEND", "torch")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import engine  # noqa: F401  (before numpy: engine may pick OpenBLAS's kernels)

    from benchmarks import frameworks as fw
    from benchmarks import report
    from benchmarks.sections import Context, run_section
    from benchmarks.targets import targets

    started = time.perf_counter()
    ctx = Context(args, weights_file(args))
    missing = fw.available()
    for name in list(args.contenders):
        if missing.get(name, "unknown contender") is not None:
            ctx.note(f"{fw.NAMES.get(name, name)} skipped: {missing.get(name, 'unknown contender')}")
            args.contenders.remove(name)
    threads = fw.set_threads(args.threads)
    results = {
        "machine": report.machine_info(threads),
        "settings": {k: (str(v) if isinstance(v, pathlib.Path) else v) for k, v in vars(args).items()},
        "rows": ctx.rows,
        "startup": ctx.startup,
        "memory": ctx.memory,
        "notes": ctx.notes,
    }
    results["settings"]["weights"] = str(ctx.weights)
    for section in args.sections:
        t = time.perf_counter()
        print(f"== {section}", flush=True)
        run_section(ctx, section)
        ctx.note(f"section {section} took {time.perf_counter() - t:.0f} s", log=False)
    results["targets"] = targets(results)
    results["elapsed_s"] = time.perf_counter() - started
    results["machine"] = report.machine_info(threads)  # now that every thread pool has started

    args.out.mkdir(parents=True, exist_ok=True)
    text = report.markdown(results)
    (args.out / "benchmark.md").write_text(text)
    report.write_json(results, args.out / "benchmark.json")
    timed = [r for r in ctx.rows if r["section"] in ("network", "techniques")]
    report.ratio_chart(timed or ctx.rows, args.out / "ratios.png")
    if any(r["section"] == "layers" for r in ctx.rows):
        report.ratio_chart([r for r in ctx.rows if r["section"] == "layers"], args.out / "ratios_layers.png",
                           title="conv layers alone: engine time / other time (below 1: engine faster)")
    print()
    print(text)
    print(f"wrote {args.out}/benchmark.md, benchmark.json, ratios*.png in {results['elapsed_s']:.0f} s")
    failed = [r["name"] for r in ctx.rows if "FAIL" in r["status"].values()]
    if failed:
        print(f"FAILED validation: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
