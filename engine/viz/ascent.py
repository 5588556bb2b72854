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
Arrays are NHWC float32; the loss history has shape (steps run, N).

Where the arrays live. On the CPU the loop is the host NumPy code above. On the CUDA backend,
when the objective has a device form (``objectives``: channel, mean_square / dream, l2 around a
number, total_variation, and their sums and multiples), the batch goes to the device once and
stays there for the whole run: the transforms (``transforms.apply_all_on``), the forward and
backward passes, the objective's losses and gradients (score kernels), the per-sample
normalisation (``sample_scale``) and the masked step (``masked_axpy``) all run as backend ops on
device arrays, in buffers of the run's ``Workspace`` that every step reuses (the reductions'
partial sums among them). Per step only the N losses come back (the stopping rules and the
callback need them); the images come back at the end, or stay on the device when ``x`` was a
device array (DeepDream's octaves). The two paths take the same steps and agree to float32 rounding
(``tests/test_cuda_loops.py``). An objective without a device form takes the host path on any
backend, its activations copied to the host at every step.
"""

from dataclasses import dataclass

import numpy as np

from engine.backend import Workspace
from engine.viz.objectives import INPUT, Accumulator
from engine.viz.transforms import adjoint_all, adjoint_all_on, apply_all, apply_all_on

DEFAULT_EPS = {"rms": 1e-5, "mean_abs": 1e-7}


@dataclass
class AscentResult:
    images: np.ndarray  # (N, H, W, C) the optimised batch (a device array when x was one)
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
        eps = DEFAULT_EPS[method] if eps is None else eps
        scale = np.sqrt(np.mean(np.square(g, dtype=np.float64), axis=axes, keepdims=True)) + eps
    elif method == "mean_abs":
        eps = DEFAULT_EPS[method] if eps is None else eps
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
    resident: bool | None = None,
) -> AscentResult:
    """Maximise ``objective`` over the image batch ``x`` (NHWC); returns an ``AscentResult``.

    ``callback(step, loss)`` is called after every step (progress display). ``x`` may be a host
    array or a device array of the model's backend; the result's images are of the same kind.
    ``resident``: None runs on the device when the backend computes on one and the objective
    has a device form (see the module docstring); True runs the backend-op loop on any backend
    (on the CPU: the ops' NumPy versions, for tests); False the host loop.
    """
    args = (model, x, objective, steps, step_size, normalize, eps, transforms, seed,
            stop_if_nonpositive, max_loss, relu, callback)
    if normalize is not None and normalize not in DEFAULT_EPS:
        raise ValueError(f"unknown gradient normalisation {normalize!r}")
    if resident is None:
        resident = not model.backend.on_host and objective.device is not None
    if not resident:
        if _is_device_array(x):  # a device batch with a host-only objective: there and back
            result = _host_ascent(*(model, model.backend.to_host(x)) + args[2:])
            result.images = model.backend.to_device(result.images)
            return result
        return _host_ascent(*args)
    if objective.device is None:
        raise ValueError(f"{objective!r} has no device form: it can only run on the host loop")
    return _device_ascent(*args)


def _is_device_array(x) -> bool:
    return not isinstance(x, np.ndarray) and hasattr(x, "copy_to_host")


def _host_ascent(
    model, x, objective, steps, step_size, normalize, eps, transforms, seed, stop_if_nonpositive,
    max_loss, relu, callback,
) -> AscentResult:
    """The loop on host NumPy arrays (any backend; activations copied to the host each step)."""
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


def _device_ascent(
    model, x, objective, steps, step_size, normalize, eps, transforms, seed, stop_if_nonpositive,
    max_loss, relu, callback,
) -> AscentResult:
    """The same loop as backend ops on the backend's arrays: the batch, activations, gradients
    and losses stay on the device; per step only the N losses cross to the host."""
    backend = model.backend
    work = Workspace(backend)
    ops = work.ops  # the backend's ops, reusing the workspace's scratch
    given_on_host = not _is_device_array(x)
    if given_on_host:
        x = np.array(x, dtype=np.float32, copy=True)
        x = backend.to_device(x[None] if x.ndim == 3 else x)
    else:
        x = backend.copy(x)
    n = x.shape[0]
    layers = [name for name in objective.layers if name != INPUT]
    deepest = max(layers, key=model.layer_index) if layers else None
    if normalize is not None:
        eps = DEFAULT_EPS[normalize] if eps is None else eps
    rng = np.random.default_rng(seed)
    active = np.ones(n, dtype=bool)
    uploaded = active.copy()
    active_on_device = backend.upload(uploaded.astype(np.int32))
    final_loss = np.full(n, np.nan, dtype=np.float32)
    loss, scale = work.buffer("loss", (n,)), work.buffer("scale", (n,))
    history = []
    for step in range(steps):
        xt, states = apply_all_on(work, transforms, x, rng) if transforms else (x, [])
        acts, trace = {}, None
        if layers:
            trace = model.trace(xt, upto=deepest)
            acts = {name: trace.output(name) for name in layers}
        acts[INPUT] = x
        ops.fill(0.0, loss)
        grads = {name: work.zeros(("grad", name), acts[name].shape) for name in objective.layers}
        objective.device(Accumulator(work, acts, loss, grads), 1.0)
        if layers:
            g = trace.backward({name: grads[name] for name in layers}, relu=relu)[INPUT]
            g = adjoint_all_on(work, transforms, g, states) if transforms else g
        else:
            g = work.zeros("input gradient", x.shape)
        if INPUT in grads:
            ops.axpy(1.0, grads[INPUT], g)

        step_loss = backend.to_host(loss)  # the one copy to the host per step: N floats
        history.append(step_loss)
        final_loss[active] = step_loss[active]
        if max_loss is not None:
            active &= step_loss <= max_loss
        if normalize is None:
            ops.fill(1.0, scale)
        else:
            ops.sample_scale(g, normalize, eps, scale)
        if not np.array_equal(active, uploaded):  # N ints to the device, when a sample stops
            uploaded = active.copy()
            backend.copy_into(uploaded.astype(np.int32), active_on_device)
        ops.masked_axpy(step_size, scale, g, active_on_device, x)
        if stop_if_nonpositive:
            active &= step_loss > 0
        if callback is not None:
            callback(step, step_loss)
        if not active.any():
            break
    losses = np.array(history, dtype=np.float32).reshape(len(history), n)
    images = backend.to_host(x) if given_on_host else x
    return AscentResult(images=images, losses=losses, active=active, final_loss=final_loss)
