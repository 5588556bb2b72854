"""Pixel-space ascent (the Keras example) against Lucid's recipe (fft + decorrelate + robust, Adam)
on real weights, at equal steps: the activation each reaches and how many tiles stay dead.

    python -m benchmarks.lucid_effect WEIGHTS.h5 --layer block2_conv2 --filters 64 --steps 20 --out docs/images

For each method, every filter 0..n-1 of the layer is optimised once (same seed), then measured
on its final network input, without transforms:

* activation: the filter's mean activation over positions (what both methods maximise);
* dead: the picture shows nothing of the filter in its middle, either because the filter never
  fired (its activation at the final image is <= 0; the Keras example drops such filters) or
  because the central half of the network input (rows and columns H/4..3H/4, pixel levels)
  has a std below FLAT_STD = 8 levels: no more contrast than the Keras example's start noise
  (uniform, 20 levels wide: std 5.8), or Lucid's near-uniform gray start. (The Keras pictures are
  standardised per image for display, which stretches such leftover noise to full contrast: the
  gray-noise tiles.)

Writes <out>/filters_<layer>_pixel.png and _lucid.png (filters 0-7 in a row, PNG with a 256-colour
palette to keep them small) and prints one table row per method. Numbers and pictures are quoted
in README.md (docs/images/).
"""

import argparse
import time
from pathlib import Path

import numpy as np
from PIL import Image

import engine
from engine.viz.filters import visualize_filters
from engine.viz.pictures import stitch_grid

FLAT_STD = 8.0  # pixel levels
METHODS = {
    "pixel": dict(),
    "lucid": dict(param="fft", decorrelate=True, robust=True),
}


def measure(model, layer, filters, size, steps, method):
    start = time.perf_counter()
    result = visualize_filters(model, layer, filters=filters, size=size, steps=steps, batch=32, **METHODS[method])
    elapsed = time.perf_counter() - start
    activation = model.forward(result.raw, outputs=[layer])[layer][..., :].mean(axis=(1, 2))
    activation = activation[np.arange(len(filters)), filters]
    q = size // 4
    middle = result.raw[:, q : size - q, q : size - q, :]
    flat = middle.reshape(len(filters), -1).std(axis=1) < FLAT_STD
    dead = (activation <= 0) | flat
    return result, activation, dead, elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights")
    parser.add_argument("--layer", default="block2_conv2")
    parser.add_argument("--filters", type=int, default=64)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    model = engine.load(args.weights)
    filters = np.arange(args.filters)
    print(f"{args.layer}, filters 0-{args.filters - 1}, {args.size} px, {args.steps} steps, {model.device}")
    print("method | mean activation | median | dead tiles (never fired + flat) | seconds")
    for method in METHODS:
        result, activation, dead, elapsed = measure(model, args.layer, filters, args.size, args.steps, method)
        never = int((activation <= 0).sum())
        print(f"{method} | {activation.mean():.1f} | {np.median(activation):.1f} | {int(dead.sum())} "
              f"({never} + {int(dead.sum()) - never}) | {elapsed:.0f}")
        if args.out is not None:
            picture = stitch_grid(result.images[:8], columns=8, margin=2)
            path = args.out / f"filters_{args.layer}_{method}.png"
            Image.fromarray(picture).quantize(256).save(path, optimize=True)
            print(f"  wrote {path}; dead: {filters[dead].tolist()}")


if __name__ == "__main__":
    main()
