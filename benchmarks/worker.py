"""A fresh process doing one contender's work, for start-up time and peak memory.

    python benchmarks/worker.py CONTENDER WEIGHTS --size S --batch N --threads T [--onnx FILE]
                                [--work forward|forward_grad|both|dream [--octaves K --steps S]]

Imports the framework, loads the weights, runs ``--work`` once (the first call: compilation or
loading from Numba's cache happens here for the engine) and prints one JSON line with the time
of each phase (seconds, from this process's own clock) and ``ru_maxrss`` after loading and at
the end (KiB). Peak RSS is read from /proc/self/status (VmHWM): Linux carries ``ru_maxrss``
across fork + exec, so a worker spawned by a parent holding 1 GiB of frameworks would report at
least that. It prints "first call done" as soon as the first call returns: the parent
measures the wall time from spawning to that line (start-up as a user sees it). Thread settings go into the environment before any import.
"""

import argparse
import json
import os
import pathlib
import resource
import sys
import time

T0 = time.perf_counter()


def peak_rss_kib():
    """This process's peak RSS (KiB): VmHWM, which exec resets, unlike ru_maxrss (see below)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("contender", choices=["engine", "pytorch", "onnxruntime", "keras", "python"])
    parser.add_argument("weights")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--onnx", default=None, help="exported model for onnxruntime")
    parser.add_argument("--work", default="forward", choices=["forward", "forward_grad", "both", "dream"])
    parser.add_argument("--octaves", type=int, default=4, help="--work dream: octaves")
    parser.add_argument("--steps", type=int, default=2, help="--work dream: steps per octave")
    args = parser.parse_args()
    for var in ("NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    os.environ.setdefault("KERAS_BACKEND", "torch")
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

    phases = {}
    mark = T0

    def phase(name):
        nonlocal mark
        now = time.perf_counter()
        phases[name] = now - mark
        mark = now

    if args.contender == "python":
        print(json.dumps({"phases": {}, "rss_loaded_kib": peak_rss_kib()}))
        return
    import engine  # noqa: F401  (sets OPENBLAS_CORETYPE before numpy loads, as users get it)
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.uniform(-120, 120, (args.batch, args.size, args.size, 3)).astype(np.float32)
    side = args.size // 32
    g = rng.standard_normal((args.batch, side, side, 512)).astype(np.float32)
    work = ["forward", "forward_grad"] if args.work == "both" else [args.work]
    if args.contender == "onnxruntime":
        work = ["forward"]
    phase("import numpy + engine package")

    from benchmarks import frameworks as fw

    if args.contender in ("pytorch", "keras"):
        import torch

        torch.set_num_threads(args.threads)
        if args.contender == "keras":
            import keras  # noqa: F401
    elif args.contender == "onnxruntime":
        import onnxruntime as ort
    else:
        import kernels.cpu  # noqa: F401  (compiles, or loads from the cache, every kernel)
    phase("import framework")
    if work == ["dream"]:  # DeepDream on one size x size image, as the techniques section runs it
        from benchmarks import techniques as tq

        img, setting = tq.dream_image(args.size), tq.dream_setting(args.octaves, args.steps)
        if args.contender == "engine":
            model = fw.make("engine", args.weights, args.threads).model
            runs = {"dream": lambda: tq.engine_dream(model, img, **setting)}
        else:
            if args.contender == "keras":
                outputs = tq.keras_outputs(args.weights, list(tq.DREAM_LAYERS))
            else:
                from tests.reference_models import TorchVGG16

                outputs = tq.torch_outputs(TorchVGG16(args.weights, include_top=False), "block5_conv1")
            runs = {"dream": lambda: tq.dream_reference(outputs, img, **setting)}
    elif args.contender == "onnxruntime":
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(args.onnx, options, providers=["CPUExecutionProvider"])
        xn = fw.nchw(x)
        runs = {"forward": lambda: session.run(None, {"x": xn})}
    else:
        contender = fw.make(args.contender, args.weights, args.threads)
        if args.contender == "keras":
            contender.model(args.size)
        runs = {w: contender.prepare((w, x, g)) for w in work}
    phase("load weights")
    rss_loaded = peak_rss_kib()
    runs[work[0]]()
    phase("first call")
    print("first call done", flush=True)  # the parent timestamps this line
    for w in work[1:]:
        runs[w]()
    runs[work[0]]()
    phase("other calls")
    print(
        json.dumps(
            {
                "phases": phases,
                "to_first_call_s": sum(v for k, v in phases.items() if k != "other calls"),
                "rss_loaded_kib": rss_loaded,
                "rss_end_kib": peak_rss_kib(),
                "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                "work": work,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
