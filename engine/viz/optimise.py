"""The one optimisation loop behind filters, dreams, class models, fooling, inversions and textures.

    result = optimise(model, x, objective, Ascent(step_size=1.0, normalize="rms"), steps=20,
                      stops=[nonpositive()])

Each step: transform the batch (random, seeded; ``transforms``), run the network up to the
deepest layer the objective reads, score it (``objective.score``: loss (N,) and the gradients at
those layers), backpropagate to the input, map the gradient back through the transforms'
adjoints, add the gradient of input-space terms (they see the untransformed image), check the
stopping rules, and let the step rule move the samples still active. Samples are independent: a
batch of 64 filters gives the same images as 64 runs of one filter, only faster.

Step rules (``engine.viz.steps``): ``Ascent`` (normalised gradient ascent, the Keras filter and
DeepDream examples), ``Adam`` (descent with bounds and quantisation: fooling, inversion,
textures) and ``LBFGS`` (scipy's, textures; it drives its own line searches through the same
gradient). A rule's sign is its own: Ascent maximises the objective, Adam and L-BFGS minimise it.

Stopping rules: ``Stop(test, after_update)``; ``test(step, loss)`` returns (N,) True for the
samples to freeze, before that step's update, or after it when ``after_update`` (the update of
that step still applies). ``above(max_loss)`` (Keras ``deep_dream``) and ``nonpositive()``
(Keras ``conv_filter_visualization``) are the anchors'. A frozen sample keeps its image; the
loop ends when every sample is frozen or after ``steps`` steps.

Image parameterisations (``engine.viz.param``): with ``param``, x holds the parameters the
rule moves (``param.param_shape``, e.g. a Fourier spectrum) and the network sees
``param.forward(x)``; the image gradient goes back through ``param.backward`` (its exact
adjoint) before the step. Input-space objective terms and the transforms see the image. Without
``param`` (the identity) x is the image, exactly as before.

Where arrays live: on the model's backend, in buffers (``Backend.buffers``) that every step
reuses: the batch, the activations, the losses and gradients, the transforms' outputs, the
step's work. Per step only the N losses come to the host (the stopping rules and the callback
need them), plus what a step rule or objective term computes in NumPy (see their modules). The
images come back at the end, or stay on the device when ``x`` was a backend array (DeepDream's
octaves). Shapes: x (N, H, W, C) (or one (H, W, C) image); the loss history (steps run, N).
"""

from dataclasses import dataclass

import numpy as np

from engine.viz.objectives import INPUT, Accumulator
from engine.viz.transforms import adjoint_all, apply_all


@dataclass
class Result:
    images: np.ndarray  # (N, H, W, C) the optimised batch (a backend array when x was one)
    losses: np.ndarray  # (steps run, N) loss measured at each step, before its update (L-BFGS:
    # at each evaluation)
    steps: np.ndarray  # (N,) updates applied to each sample (L-BFGS: evaluations)
    active: np.ndarray  # (N,) False for samples a stopping rule froze
    final_loss: np.ndarray  # (N,) each sample's loss at the last step it took part in (the
    # number the Keras examples report; for a sample frozen before an update, the loss that stopped it)
    params: np.ndarray | None = None  # with ``param``: the optimised parameters (host); images = forward(params)


@dataclass
class Stop:
    test: object  # test(step, loss (N,) host) -> (N,) bool: the samples to freeze
    after_update: bool = False


def above(max_loss: float) -> Stop:
    """Freeze a sample whose loss exceeds ``max_loss``, before that step's update (Keras deep_dream)."""
    return Stop(lambda step, loss: ~(loss <= max_loss))


def nonpositive() -> Stop:
    """Freeze a sample after the update of a step whose loss was <= 0 (Keras filter example)."""
    return Stop(lambda step, loss: ~(loss > 0), after_update=True)


def gradient(model, buffers, x, objective, transforms=(), rng=None, relu="standard"):
    """(loss (N,), d loss / d x) of ``objective`` at x through ``transforms``: arrays of the
    model's backend, in ``buffers`` (valid until the next call with the same buffers)."""
    ops = buffers.ops
    layers = [name for name in objective.layers if name != INPUT]
    xt, states = apply_all(buffers, transforms, x, rng)
    acts = {}
    if layers:
        deepest = max(layers, key=model.layer_index)
        # an objective that reads one channel per sample of the deepest layer needs only those
        channels = objective.channels_read(deepest, x.shape[0]) if model.can_select(deepest) else None
        trace = model.trace(xt, upto=deepest, channels=channels)
        acts = {name: trace.output(name) for name in layers}
    acts[INPUT] = x
    loss = ops.fill(0.0, buffers.get("loss", (x.shape[0],)))
    grads = {name: buffers.zeros(("grad", name), acts[name].shape) for name in objective.layers}
    objective.score(Accumulator(buffers, acts, loss, grads), 1.0)
    if layers:
        g = trace.backward({name: grads[name] for name in layers}, relu=relu, release=True)[INPUT]
        g = adjoint_all(buffers, transforms, g, states)
    else:
        g = buffers.zeros("input gradient", x.shape)
    if INPUT in grads:
        ops.axpy(1.0, grads[INPUT], g)
    return loss, g


def objective_gradient(model, x, objective, relu="standard"):
    """(loss (N,), d loss / d x) at the batch x, as host arrays: one evaluation of the loop's."""
    backend = model.backend
    loss, g = gradient(model, backend.buffers(), backend.asarray(x), objective, relu=relu)
    return backend.to_host(loss), backend.to_host(g)


def optimise(model, x, objective, rule, steps: int, transforms=(), stops=(), seed: int = 0,
             relu: str = "standard", callback=None, param=None) -> Result:
    """Run ``rule`` on ``objective`` over the batch x for at most ``steps`` steps; see the module
    docstring. ``seed`` seeds the transforms; ``relu`` is the backward's ReLU mode;
    ``callback(step, loss)`` runs after every step (progress display); ``param``: an
    ``engine.viz.param.ImageParam`` on the model's backend, x then being its parameters."""
    backend = model.backend
    keep = backend.owns(x)
    if not keep:
        x = np.asarray(x, dtype=backend.dtype)
        x = x[None] if x.ndim == 3 and param is None else x
    if param is not None and param.backend.name != backend.name:
        raise ValueError(f"the parameterisation runs on {param.backend.name}, the model on {backend.name}")
    buffers = backend.buffers()
    x = backend.copy_into(x, buffers.get("x", x.shape))
    n = x.shape[0]
    image_of = (lambda v: v) if param is None else param.forward  # noqa: E731

    def image_gradient(v, rng=None, moves=()):
        loss, g = gradient(model, buffers, image_of(v), objective, moves, rng, relu)
        return loss, (g if param is None else param.backward(g))

    if hasattr(rule, "minimise"):  # a rule that drives its own iterations (L-BFGS)
        if param is None:
            evaluate = lambda v: objective_gradient(model, v, objective, relu)  # noqa: E731
        else:
            evaluate = lambda v: tuple(backend.to_host(a) for a in image_gradient(backend.asarray(v)))  # noqa: E731
        found, losses = rule.minimise(evaluate, backend.to_host(x), steps, callback)
        final = losses[-1] if len(losses) else np.full(n, np.nan, np.float32)
        images = found if param is None else backend.to_host(param.forward(backend.asarray(found)))
        images = backend.asarray(images) if keep else images
        return Result(images, losses, np.full(n, len(losses)), np.ones(n, dtype=bool), final,
                      None if param is None else found)
    rng = np.random.default_rng(seed)
    rule.start(buffers, x)
    active, taken = np.ones(n, dtype=bool), np.zeros(n, dtype=np.int64)
    mask = backend.copy_into(np.ones(n, np.int32), buffers.get("active", (n,), np.int32))
    masked = active.copy()  # what mask holds
    final_loss = np.full(n, np.nan, dtype=np.float32)
    history = []
    for step in range(steps):
        loss, g = image_gradient(rule.seen(buffers, x), rng, transforms)
        loss = backend.to_host(loss)  # the one copy to the host per step: N floats
        history.append(loss)
        final_loss[active] = loss[active]
        for stop in stops:
            if not stop.after_update:
                active &= ~np.asarray(stop.test(step, loss), dtype=bool)
        if active.any():
            if not np.array_equal(active, masked):  # N ints to the device, when a sample stops
                masked = active.copy()
                backend.copy_into(masked.astype(np.int32), mask)
            rule.update(buffers, x, g, active, mask)
            taken += active
        for stop in stops:
            if stop.after_update:
                active &= ~np.asarray(stop.test(step, loss), dtype=bool)
        if callback is not None:
            callback(step, loss)
        if not active.any():
            break
    found = rule.seen(buffers, x)
    images = image_of(found)
    images = backend.copy(images) if keep else backend.to_host(images)
    losses = np.array(history, dtype=np.float32).reshape(len(history), n)
    params = None if param is None else backend.to_host(found)
    return Result(images=images, losses=losses, steps=taken, active=active, final_loss=final_loss, params=params)
