"""SmoothGrad (Smilkov et al., 2017): the vanilla gradient averaged over noisy copies of the image.

Each of ``samples`` copies adds Gaussian noise of standard deviation ``noise`` x (max - min) of
that image (the paper's noise level, 10-20% recommended; 0.15 by default), and the attribution is
the mean of the copies' gradients of the clean image's class logit. All copies of all images go
through the network as batches of ``batch`` rows.

The noise is seeded per (seed, sample): copy s gets the same standard-normal pattern (scaled by
each image's own deviation) whatever the batch size, the image's place in the batch and the
number of images, so a batch gives what each image gives alone; ``noisy_copies`` gives it to
anyone who wants to check (the tests give the same noise to PyTorch).
"""

import numpy as np

from engine.errors import ConvscopeError
from engine.viz.attribution.base import Attribution, channel_map, check_count, gathered, gradient_batches, prepare


def noise_sigma(image, noise: float) -> float:
    """The noise's standard deviation for one image: ``noise`` x (max - min) of its values."""
    image = np.asarray(image, dtype=np.float64)
    return float(noise * (image.max() - image.min()))


def noisy_copies(image, samples, noise: float, seed: int) -> np.ndarray:
    """The noisy copies number ``samples`` (a sequence of sample numbers) of one image, float32."""
    image = np.asarray(image, dtype=np.float32)
    sigma = np.float32(noise_sigma(image, noise))
    out = np.empty((len(samples),) + image.shape, dtype=np.float32)
    for i, s in enumerate(samples):
        rng = np.random.default_rng([int(seed), int(s)])
        out[i] = image + sigma * rng.standard_normal(image.shape, dtype=np.float32)
    return out


def smoothgrad(model, x, classes=None, samples=50, noise=0.15, seed=0, batch=16, progress=None) -> Attribution:
    """Mean gradient over ``samples`` noisy copies of each image, of its class logit (the class
    given, or the clean image's top class)."""
    x, wanted, batch = prepare(model, x, classes, batch)
    samples = check_count(samples, "samples")
    if not np.isfinite(noise) or noise < 0:
        raise ConvscopeError(f"noise {noise!r} must be a fraction of the input range, at least 0")
    clean = gathered(model, x, wanted, batch, wrt_input=False)
    n = x.shape[0]

    def make_rows(start, stop):
        rows = [noisy_copies(x[r // samples], [r % samples], noise, seed) for r in range(start, stop)]
        return np.concatenate(rows)

    row_classes = np.repeat(clean.classes, samples)
    total = np.zeros(x.shape, dtype=np.float64)
    for start, stop, part in gradient_batches(model, n * samples, make_rows, row_classes, batch, progress):
        np.add.at(total, np.arange(start, stop) // samples, part.gradients)
    mean = (total / samples).astype(np.float32)
    return Attribution("smoothgrad", mean, channel_map(mean), False, clean.classes, clean.scores, clean.probabilities)
