"""A network as an ordered table of layers, run forward and backward-to-input on one backend.

Shapes: inputs and activations are NHWC float32 (dense outputs are (N, n)). Layer outputs follow
Keras semantics: a Conv2D/Dense layer's output is after its activation. The name ``"logits"``
means the pre-activation output of the last layer (the pre-softmax class scores of VGG16).

``Model.trace(x)`` runs the forward pass and returns a ``Trace`` that keeps exactly what the
backward needs (activation outputs for the ReLU/softmax/sigmoid backward, max-pool argmax), as
llm.c does: no hidden tape. ``Trace.backward({layer: grad, ...})`` injects gradients at any set of
layers (DeepDream sums several) and returns the gradient with respect to the input and, on
request, to intermediate layer outputs (Grad-CAM). No weight gradients are ever computed.
Each layer kind's forward/backward pair and geometry live in one table (``engine.layers``); the
trace only walks the layers and hands gradients between them.

Layer outputs and gradients live in one pool of the backend (``Backend.buffers``: one buffer per
role and layer, grown to the largest input seen), reused by every pass, so a new trace
invalidates the arrays of the previous one; ``forward`` and ``input_gradient`` return host
copies and are always safe.
"""

import os

import numpy as np

from kernels import RELU_MODES
from engine import geometry
from engine.backend import get_backend
from engine.errors import ConvscopeError
from engine.layers import ACTIVATIONS, LAYERS, Conv2D, Dense, MaxPool2D, ReLU, layer_output_shape
from engine.spec import NetworkSpec

LOGITS = "logits"
INPUT = "input"

# CPU convolutions: "auto" takes the fastest algorithm per layer (Winograd for 3x3), "gemm" im2col +
# GEMM only (docs/design.md, "Layers and geometry", on why both exist).
CONV_ALGORITHMS = ("auto", "gemm")


class Model:
    """A loaded network on one backend. Build with ``engine.load``."""

    def __init__(self, spec: NetworkSpec, device="cpu", path=None, conv=None):
        self.spec = spec
        self.path = path
        self.backend = get_backend(device)
        if conv is None:
            conv = os.environ.get("CONVSCOPE_CONV") or "auto"
        if conv not in CONV_ALGORITHMS:
            raise ConvscopeError(
                f"unknown convolution algorithm {conv!r}: choose one of {', '.join(CONV_ALGORITHMS)}"
            )
        self.conv = conv
        self._conv_options = self.backend.conv_options(conv)  # only the CPU has a choice
        self.layers = spec.layers
        self._index = {layer.name: i for i, layer in enumerate(self.layers)}
        on_device, frozen = self.backend.asarray, self.backend.frozen  # kernels frozen: never written
        self._params = [
            (frozen(l.kernel), on_device(l.bias)) if l.kernel is not None else (None, None) for l in self.layers
        ]
        self._workspace = self.backend.buffers()  # layer outputs and gradient arenas, reused
        self._generation = 0

    # --- description -------------------------------------------------------------------------
    @property
    def device(self) -> str:
        return self.backend.name

    @property
    def layer_names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    @property
    def input_shape(self) -> tuple:
        return tuple(self.spec.input_shape)

    @property
    def has_classifier(self) -> bool:
        return isinstance(LAYERS[self.layers[-1].kind], Dense)

    @property
    def n_params(self) -> int:
        return sum(layer.n_params for layer in self.layers)

    def output_shapes(self, input_hw, upto=None) -> list[tuple]:
        """Per-layer output shapes (without batch) for an input of (H, W), up to layer index
        ``upto`` (default: all); a one-line error when the size does not fit those layers."""
        return geometry.output_shapes(self.spec, input_hw, upto)

    def min_input_size(self) -> int:
        """Smallest square input for which no spatial layer is empty."""
        return geometry.min_input_size(self.layers)

    def summary_rows(self, input_size=None) -> list[tuple]:
        """Rows (name, kind, output shape, parameter count) for an input of (H, W)."""
        if input_size is None:
            input_size = self.input_shape[:2] if self.input_shape[0] else (224, 224)
        shapes = self.output_shapes(input_size)
        return [(l.name, l.kind, s, l.n_params) for l, s in zip(self.layers, shapes)]

    def summary(self, input_size=None) -> str:
        """The layers as a text table (name, kind, output shape, parameters) and the total, as
        Keras' ``model.summary()`` shows them; ``summary_rows`` gives the same rows as tuples."""
        rows = self.summary_rows(input_size)
        width = max([len("layer")] + [len(row[0]) for row in rows])
        lines = [f"{'layer':<{width}}  {'kind':<9}  {'output':<14}  {'params':>12}"]
        for name, kind, shape, n_params in rows:
            lines.append(f"{name:<{width}}  {kind:<9}  {'x'.join(map(str, shape)):<14}  {n_params:>12,}")
        lines.append(f"total: {self.n_params:,} parameters ({self.n_params * 4 / 2**20:.1f} MiB as float32)")
        return "\n".join(lines)

    def layer_index(self, name: str) -> int:
        """Index of a layer by name ('logits' is the last layer); a clear error when unknown."""
        if name == LOGITS:
            return len(self.layers) - 1
        if name not in self._index:
            shown = ", ".join(self.layer_names)
            raise ConvscopeError(f"unknown layer {name!r}: this network has {shown}, and 'logits'")
        return self._index[name]

    # --- running ---------------------------------------------------------------------------
    def check_input(self, x, upto=None) -> np.ndarray:
        """x as float32 NHWC, with a clear error for a wrong rank, channel count or size (for the
        layers up to index ``upto``: a pass that stops in the conv stack takes any size)."""
        x = np.asarray(x)
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[-1] != self.input_shape[2]:
            raise ConvscopeError(
                f"input of shape {x.shape} is not NHWC with {self.input_shape[2]} channels"
            )
        if not np.issubdtype(x.dtype, np.number):
            raise ConvscopeError(f"input of dtype {x.dtype} is not numeric")
        x = np.ascontiguousarray(x, dtype=self.backend.dtype)
        if not np.isfinite(x).all():
            raise ConvscopeError("input contains NaN or infinite values")
        self.output_shapes(x.shape[1:3], upto)
        return x

    def _buffer(self, role, index, shape, dtype=None):
        """The buffer of (role, layer index) shaped ``shape``: one per role and layer, grown to the
        largest shape asked for, whatever the input sizes (DeepDream's octaves, tiles), not one
        per shape. A newer trace reuses it (``Trace._check_current``)."""
        return self._workspace.get((role, index), shape, dtype)

    def _arena(self, slot, shape, capacity):
        """A view shaped ``shape`` on gradient arena ``slot`` (0 or 1) of at least ``capacity``
        elements: the backward's gradients alternate between the two arenas, so two buffers of
        the largest gradient serve every layer (not two per shape)."""
        return self._workspace.get(("arena", slot), (capacity,))[: int(np.prod(shape))].reshape(shape)

    def trace(self, x, upto=None, channels=None) -> "Trace":
        """Forward pass up to layer ``upto`` (default: the last), keeping what backward needs.

        ``channels``: (N,) ints, one channel of the last layer per sample (a conv layer, on the
        CPU): only those are computed, the others read zero, and a backward must inject its
        gradient in those channels only (an objective that reads one channel per sample).
        """
        last = len(self.layers) - 1 if upto is None else self.layer_index(upto)
        if isinstance(x, np.ndarray) or not self.backend.owns(x):  # host data: checked
            x = self.check_input(x, last)
        if channels is not None:
            channels = np.asarray(channels, dtype=np.int64).reshape(-1)
            spec = self.layers[last]
            if not self.can_select(spec.name) or len(channels) != x.shape[0]:
                raise ValueError(f"one channel per sample of {spec.name} cannot be computed alone here")
            if channels.min() < 0 or channels.max() >= spec.kernel.shape[3]:
                raise ValueError(f"{spec.name} has channels 0 to {spec.kernel.shape[3] - 1}")
        self._generation += 1
        return Trace(self, self.backend.asarray(x), last, channels)

    def can_select(self, name) -> bool:
        """Whether ``trace(..., channels=)`` can compute single channels of layer ``name``."""
        return self.backend.name == "cpu" and isinstance(LAYERS[self.layers[self.layer_index(name)].kind], Conv2D)

    def forward(self, x, outputs=None) -> dict:
        """{name: host array} of the requested layer outputs (default: the last layer)."""
        names = [self.layer_names[-1]] if outputs is None else list(outputs)
        if isinstance(outputs, str):
            names = [outputs]
        last = max(self.layer_index(name) for name in names)
        trace = self.trace(x, upto=self.layer_names[last])
        return {name: self.backend.to_host(trace.output(name)) for name in names}

    def predict(self, x) -> np.ndarray:
        """Class probabilities (the last layer's output) for an NHWC batch."""
        if not self.has_classifier:
            raise ConvscopeError(
                "this weights file has no classifier (it is a 'notop' file): use "
                "vgg16_weights_tf_dim_ordering_tf_kernels.h5"
            )
        return self.forward(x)[self.layer_names[-1]]

    def input_gradient(self, x, layer, grad_output, relu="standard") -> np.ndarray:
        """d sum(grad_output * layer(x)) / dx, as a host NHWC array shaped like x.

        ``relu``: 'standard', 'guided' (guided backprop) or 'deconv' backward through every ReLU.
        """
        trace = self.trace(x, upto=layer)
        grads = trace.backward({layer: grad_output}, relu=relu, release=True)
        return self.backend.to_host(grads[INPUT])


class Trace:
    """The state of one forward pass: every layer's output and the max-pool argmax."""

    def __init__(self, model: Model, x, last: int, channels=None):
        self.model = model
        self.generation = model._generation
        self.input = x
        self.last = last
        self.channels = {} if channels is None else {last: channels}  # layer index -> (N,) channels
        n = x.shape[0]
        self.outputs, self.argmax, self.logits = [], {}, None
        self.owned = {}  # layer index -> key of the buffer that holds only that layer's output
        self.released = False
        h = x
        for i, spec in enumerate(model.layers[: last + 1]):
            h = LAYERS[spec.kind].forward(self, i, spec, h, (n,) + layer_output_shape(spec, h.shape[1:]))
            self.outputs.append(h)

    def own(self, i, role, shape):
        """The buffer (role, i) shaped ``shape``, for layer i's output and nothing else."""
        self.owned[i] = (role, i)
        return self.model._buffer(role, i, shape)

    def layer_input(self, i):
        """The input of layer i: the previous layer's output, or the network input."""
        return self.outputs[i - 1] if i > 0 else self.input

    def _check_current(self):
        if self.generation != self.model._generation:
            raise RuntimeError("this trace's buffers were reused by a newer trace of the model")
        if self.released:
            raise RuntimeError("this trace's outputs were released by its backward pass (release=True)")

    def output(self, name):
        """A layer's output (device array); 'logits' = the last layer before its activation."""
        self._check_current()
        i = self.model.layer_index(name)
        if i > self.last:
            raise ValueError(f"layer {name!r} lies beyond this trace (it stops at layer {self.last})")
        if name == LOGITS:
            return self.logits if self.logits is not None else self.outputs[i]
        return self.outputs[i]

    def backward(self, grads: dict, relu="standard", wrt=(INPUT,), release=False) -> dict:
        """Backpropagate gradients injected at layer outputs; return them at ``wrt``.

        ``grads`` maps layer names (or 'logits') to arrays shaped like those outputs: the pass
        computes d sum_l sum(grads[l] * l(x)) / d(each name in wrt). ``wrt`` holds 'input' and/or
        layer names. ``relu`` selects the ReLU backward: 'standard', 'guided' or 'deconv'.
        The returned arrays belong to the caller (later passes do not overwrite them).

        ``release``: the pass may write gradients into the buffers of layer outputs it no longer
        needs (a layer's output is dead once its activation's backward has run), so that only
        the gradients no dead output can hold take an arena (VGG16: one arena, not two); the
        trace is then spent (``output`` and ``backward`` raise), and ``grads`` must not be views
        of its outputs. Same results either way.
        """
        self._check_current()
        if relu not in RELU_MODES:
            raise ConvscopeError(f"unknown ReLU backward mode {relu!r}: use one of {', '.join(RELU_MODES)}")
        mode = RELU_MODES[relu]
        model, backend = self.model, self.model.backend
        injected = {}
        for name, g in grads.items():
            target = self.output(name)
            if tuple(g.shape) != tuple(target.shape):
                raise ConvscopeError(
                    f"gradient for {name!r} has shape {tuple(g.shape)}, the layer output has "
                    f"{tuple(target.shape)}"
                )
            injected[name] = backend.asarray(g)
        wrt_index = {model.layer_index(name): name for name in wrt if name != INPUT}
        start = max(model.layer_index(name) for name in injected)
        # without 'input' the pass can stop at the shallowest layer asked for
        stop = 0 if INPUT in wrt or not wrt_index else min(wrt_index)
        result = {}
        g = None
        # Each layer's gradient goes to a buffer other than the one the previous layer's went to
        # (``last``), which may still hold g: the two arenas alternate, and a releasing pass takes
        # the smallest dead output buffer that fits before either arena.
        capacity = max(int(np.prod(h.shape)) for h in [self.input] + self.outputs[stop:start])
        dead = [key for j, key in self.owned.items() if j > start] if release else []
        last = None
        if release:
            self.released = True

        def new_gradient(shape):
            nonlocal last
            size = int(np.prod(shape))
            fits = [(model._workspace.capacity(key), key) for key in dead if key != last]
            fits = [(room, key) for room, key in fits if room >= size]
            if fits:
                last = min(fits)[1]
                return model._buffer(last[0], last[1], shape)
            free = [slot for slot in (0, 1) if last != ("arena", slot)]
            # the free arena already largest, grown (once) to the largest gradient of the pass:
            # a releasing pass through VGG16's conv stack grows one arena, in one allocation
            slot = max(free, key=lambda k: model._workspace.capacity(("arena", k)))
            last = ("arena", slot)
            return model._arena(slot, shape, capacity)

        masked = None  # the layer whose ReLU backward already ran at its max-pool's resolution
        for i in range(start, stop - 1, -1):
            spec = model.layers[i]
            g = self._inject(g, injected.get(spec.name), i)
            if i in wrt_index:
                result[wrt_index[i]] = backend.copy(g) if g is not None else backend.zeros(self.outputs[i].shape)
                if i == stop and INPUT not in wrt:
                    break
            if g is not None and i != masked:
                g = ACTIVATIONS[spec.activation].backward(self, i, g, mode)
            if g is not None and self._relu_at_pool(i, injected, wrt_index, stop):
                # A max-pool passes each window's gradient to its winner only, whose value is the
                # pooled one: the ReLU below it masks the pooled gradient to the same bits, on a
                # quarter of the values
                backend.ops.relu_backward(g, self.outputs[i], mode, g)
                masked = i - 1
            if release and i in self.owned:
                dead.append(self.owned[i])  # read for the last time by the activation's backward
            if i == len(model.layers) - 1 and LOGITS in injected:
                g = self._inject(g, injected[LOGITS], i, role="glogit")
            if g is not None:
                g = LAYERS[spec.kind].backward(self, i, spec, g, new_gradient)
        if INPUT in wrt:
            result[INPUT] = backend.copy(g) if g is not None else backend.zeros(self.input.shape)
        return result

    def _relu_at_pool(self, i, injected, wrt_index, stop):
        """Whether layer i is a max-pool whose input layer's ReLU backward can run on the pooled
        gradient: nothing is injected at, or asked of, that layer, and the pass goes through it."""
        below = self.model.layers[i - 1] if i - 1 >= stop else None
        return (below is not None and isinstance(LAYERS[self.model.layers[i].kind], MaxPool2D)
                and isinstance(ACTIVATIONS[below.activation], ReLU) and below.name not in injected
                and i - 1 not in wrt_index)

    def _inject(self, g, addend, i, role="ginj"):
        """g + addend, in a buffer of this pass (never writing into the caller's array)."""
        if addend is None:
            return g
        backend = self.model.backend
        if g is None:
            return backend.copy_into(addend, self.model._buffer(role, i, addend.shape))
        return backend.ops.axpy(1.0, addend, g)
