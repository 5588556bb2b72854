"""The Fourier parameterisation's extra cost per optimisation step, as a share of the step itself.

    python benchmarks/fft_cost.py [--size 128] [--batch 8] [--layer block3_conv1] [--device cpu]

A feature-visualisation step with ``engine.viz.param.image(...)`` (Lucid's default: Fourier,
decorrelated colour, sigmoid) adds ``forward(params)`` before the network and ``backward(grad)``
after it. This times, interleaved in one process (``benchmarks.timing.interleaved``, medians):

* ``step``: the network part, forward to ``--layer`` and the input gradient of one channel
  (``Model.input_gradient``), on a batch of caffe images;
* ``fft``: the whole parameterisation, forward and adjoint (inverse DFT, colour matrix, sigmoid,
  caffe conversion);
* ``fft ops``: the two Fourier ops alone (``irfft2_forward`` + ``irfft2_backward``).

and prints each as a share of ``step`` (the issue's target: fft <= 15% at 128 px for
block3_conv1). Weights: ``--weights FILE``, else the synthetic notop file of ``benchmarks/run.py``
(timings do not depend on weight values). On ``--device cuda`` every timed call ends with a
device synchronisation.
"""

import argparse
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from benchmarks.timing import interleaved  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--layer", default="block3_conv1")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--weights", type=pathlib.Path, default=None)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import engine
    from benchmarks.run import weights_file
    from engine.viz import param

    model = engine.load(weights_file(args), device=args.device)
    backend = model.backend
    shape = (args.batch, args.size, args.size)
    image_param = param.image(shape, backend=backend)
    params = backend.asarray(image_param.initial(seed=0))
    images = backend.to_host(image_param.forward(params))
    out_shape = model.output_shapes((args.size, args.size), upto=model.layer_index(args.layer))[-1]
    grad_out = np.zeros((args.batch,) + tuple(out_shape), np.float32)
    grad_out[..., 0] = 1.0
    grad_images = backend.asarray(model.input_gradient(images, args.layer, grad_out))
    scale = backend.asarray(param.fourier_scale(args.size, args.size))
    spectrum_grad = backend.empty(image_param.param_shape)
    planes = backend.empty(image_param.image_shape)

    def synced(fn):
        if backend.name != "cuda":
            return fn
        from numba import cuda

        def run():
            fn()
            cuda.synchronize()

        return run

    runs = {
        "step": synced(lambda: model.input_gradient(images, args.layer, grad_out)),
        "fft": synced(lambda: (image_param.forward(params), image_param.backward(grad_images))),
        "fft ops": synced(
            lambda: (
                backend.ops.irfft2_forward(params, scale, planes),
                backend.ops.irfft2_backward(grad_images, scale, spectrum_grad),
            )
        ),
    }
    times = interleaved(runs, reps=args.reps)
    median = {name: float(np.median(t)) for name, t in times.items()}
    print(f"{args.device}, {args.layer}, {args.size} px, batch {args.batch}, {args.reps} reps (medians)")
    for name, seconds in median.items():
        share = f"  {100 * seconds / median['step']:5.1f}% of a step" if name != "step" else ""
        print(f"{name:<8} {1000 * seconds:9.2f} ms{share}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
