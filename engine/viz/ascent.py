"""The one gradient-ascent loop behind filters, dreams, class models and inversions.

Each step: transform the batch (random, seeded), run the network up to the deepest layer the
objective reads, score it, backpropagate the objective's gradients to the input, map them back
through the transforms' adjoints, add the gradient of any input-space terms (regularisers see the
untransformed image), normalise per sample, and step. Samples are independent: a batch of 64
filters gives the same images as 64 runs of one filter, only faster.

Stopping rules follow the anchors exactly:
* ``stop_if_nonpositive`` (Keras ``conv_filter_visualization``): after a step whose measured loss
  was <= 0, the sample is frozen (the update of that step still applies, as in the example).
* ``max_loss`` (Keras ``deep_dream``): a sample whose measured loss exceeds it is frozen before
  that step's update.

Normalisations: ``"rms"`` g / (sqrt(mean(g^2)) + eps) (filters, eps 1e-5), ``"mean_abs"``
g / max(mean(|g|), eps) (DeepDream, eps 1e-7), ``None`` the raw gradient.
Arrays are host NHWC float32; the loss history has shape (steps run, N).
"""

from dataclasses import dataclass

import numpy as np

from engine.viz.objectives import INPUT
from engine.viz.transforms import adjoint_all, apply_all


@dataclass
class AscentResult:
    images: np.ndarray  # (N, H, W, C) the optimised batch
    losses: np.ndarray  # (steps run, N) loss measured at each step, before its update
    active: np.ndarray  # (N,) True for samples no stopping rule froze
    final_loss: np.ndarray  # (N,) each sample's loss at the last step it took part in: the
    # number the Keras examples report (for a frozen sample, the loss that stopped it)


def normalize_gradient(g, method, eps=None):
    """Per-sample gradient normalisation (see the module docstring)."""
    if method is None:
        return g
    axes = tuple(range(1, g.ndim))
    if method == "rms":
        eps = 1e-5 if eps is None else eps
        scale = np.sqrt(np.mean(np.square(g, dtype=np.float64), axis=axes, keepdims=True)) + eps
    elif method == "mean_abs":
        eps = 1e-7 if eps is None else eps
        scale = np.maximum(np.mean(np.abs(g), axis=axes, keepdims=True, dtype=np.float64), eps)
    else:
        raise ValueError(f"unknown gradient normalisation {method!r}")
    return (g / scale).astype(g.dtype)


def objective_gradient(model, x, objective, transforms=(), rng=None, relu="standard"):
    """(loss (N,), d loss / d x) of an objective at x, through random transforms if given."""
    layers = [name for name in objective.layers if name != INPUT]
    xt, states = apply_all(transforms, x, rng) if transforms else (x, [])
    acts = {}
    trace = None
    if layers:
        deepest = max(layers, key=model.layer_index)
        trace = model.trace(xt, upto=deepest)
        acts = {name: model.backend.to_host(trace.output(name), copy=False) for name in layers}
    acts[INPUT] = x
    loss, grads = objective(acts)
    g = np.zeros_like(x)
    network_grads = {name: grad for name, grad in grads.items() if name != INPUT}
    if network_grads:
        g_t = model.backend.to_host(trace.backward(network_grads, relu=relu)[INPUT], copy=False)
        g = adjoint_all(transforms, g_t, states) if transforms else g_t
    if INPUT in grads:
        g = g + grads[INPUT]
    return np.asarray(loss, dtype=np.float32), g.astype(np.float32, copy=False)


def gradient_ascent(
    model,
    x,
    objective,
    steps: int,
    step_size: float = 1.0,
    normalize: str | None = "rms",
    eps: float | None = None,
    transforms=(),
    seed: int = 0,
    stop_if_nonpositive: bool = False,
    max_loss: float | None = None,
    relu: str = "standard",
    callback=None,
) -> AscentResult:
    """Maximise ``objective`` over the image batch ``x`` (NHWC); returns an ``AscentResult``.

    ``callback(step, loss)`` is called after every step (progress display).
    """
    x = np.array(x, dtype=np.float32, copy=True)
    if x.ndim == 3:
        x = x[None]
    rng = np.random.default_rng(seed)
    active = np.ones(len(x), dtype=bool)
    final_loss = np.full(len(x), np.nan, dtype=np.float32)
    history = []
    for step in range(steps):
        loss, g = objective_gradient(model, x, objective, transforms, rng, relu)
        history.append(loss)
        final_loss[active] = loss[active]
        if max_loss is not None:
            active &= loss <= max_loss
        update = normalize_gradient(g, normalize, eps)
        x[active] += np.float32(step_size) * update[active]
        if stop_if_nonpositive:
            active &= loss > 0
        if callback is not None:
            callback(step, loss)
        if not active.any():
            break
    losses = np.array(history, dtype=np.float32).reshape(len(history), len(x))
    return AscentResult(images=x, losses=losses, active=active, final_loss=final_loss)
