"""A network as an ordered table of layers, run forward and backward-to-input on one backend.

Shapes: inputs and activations are NHWC float32 (dense outputs are (N, n)). Layer outputs follow
Keras semantics: a Conv2D/Dense layer's output is after its activation. The name ``"logits"``
means the pre-activation output of the last layer (the pre-softmax class scores of VGG16).

``Model.trace(x)`` runs the forward pass and returns a ``Trace`` that keeps exactly what the
backward needs (activation outputs for the ReLU/softmax/sigmoid backward, max-pool argmax), as
llm.c does: no hidden tape. ``Trace.backward({layer: grad, ...})`` injects gradients at any set of
layers (DeepDream sums several) and returns the gradient with respect to the input and, on
request, to intermediate layer outputs (Grad-CAM). No weight gradients are ever computed.

Buffers are reused between passes of the same shapes, so a new trace invalidates the arrays of
the previous one; ``forward`` and ``input_gradient`` return host copies and are always safe.
"""

import os

import numpy as np

from kernels import RELU_MODES
from engine.backend import get_backend
from engine.errors import ConvscopeError
from engine.spec import NetworkSpec

LOGITS = "logits"
INPUT = "input"

# "auto": each convolution takes the CPU backend's fastest algorithm, Winograd F(4x4)/F(2x2) for
# 3x3 layers (per-layer relative error 1e-7 to 3.5e-6 against float64 on VGG16). "gemm": im2col +
# GEMM only (2-4e-7, slower). Float32 trajectories of iterated ascents (dream, class models,
# fooling) follow every rounding through ReLU and max-pool near-ties, so a stored float32-faithful
# trajectory is reproduced only by the arithmetic that made it; both are correct convolutions.
CONV_ALGORITHMS = ("auto", "gemm")


def conv_padding(spec):
    """(top, left) zero padding of a conv layer: Keras 'same' pads (k - 1) // 2 before."""
    if spec.padding == "same":
        kh, kw = spec.kernel.shape[:2]
        return ((kh - 1) // 2, (kw - 1) // 2)
    return (0, 0)


def layer_output_shape(spec, in_shape):
    """Output shape (without batch) of one layer for an input shape (without batch)."""
    if spec.kind == "conv2d":
        h, w, _ = in_shape
        kh, kw, _, c_out = spec.kernel.shape
        if spec.padding == "valid":
            h, w = h - kh + 1, w - kw + 1
        return (h, w, c_out)
    if spec.kind == "maxpool2d":
        h, w, c = in_shape
        return (h // spec.pool_size[0], w // spec.pool_size[1], c)
    if spec.kind == "flatten":
        return (int(np.prod(in_shape)),)
    if spec.kind == "dense":
        return (spec.kernel.shape[1],)
    return tuple(in_shape)  # dropout: identity at inference


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
        # only the CPU backend has a choice of algorithms (kernels/cpu/conv.py)
        self._conv_options = {"algorithm": conv} if self.backend.name == "cpu" and conv != "auto" else {}
        self.layers = spec.layers
        self._index = {layer.name: i for i, layer in enumerate(self.layers)}
        to_device = self.backend.to_device
        self._params = [
            (self._kernel(l.kernel), to_device(l.bias)) if l.kernel is not None else (None, None)
            for l in self.layers
        ]
        self._workspace = {}
        self._generation = 0

    def _kernel(self, kernel):
        """A kernel on the device; the host copy is read-only (the model never changes its
        weights), which lets the CPU backend cache Winograd's transform of it."""
        param = self.backend.to_device(kernel)
        if self.backend.on_host:
            param = np.array(param, copy=True)
            param.setflags(write=False)
        return param

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
        return self.layers[-1].kind == "dense"

    @property
    def n_params(self) -> int:
        return sum(layer.n_params for layer in self.layers)

    def output_shapes(self, input_hw, upto=None) -> list[tuple]:
        """Per-layer output shapes (without batch) for an input of (H, W), up to layer index
        ``upto`` (default: all); checks the size fits those layers."""
        shape = (int(input_hw[0]), int(input_hw[1]), self.input_shape[2])
        shapes = []
        last = len(self.layers) - 1 if upto is None else upto
        for layer in self.layers[: last + 1]:
            new = layer_output_shape(layer, shape)
            if layer.kind == "dense" and shape[0] != layer.kernel.shape[0]:
                raise ConvscopeError(
                    f"an input of {input_hw[0]}x{input_hw[1]} px gives {shape[0]} features but "
                    f"layer {layer.name} expects {layer.kernel.shape[0]}: "
                    f"use {self._fixed_size_hint()} input"
                )
            if len(new) == 3 and min(new[:2]) < 1:
                raise ConvscopeError(
                    f"an input of {input_hw[0]}x{input_hw[1]} px is too small for this network "
                    f"(layer {layer.name} would be empty): use at least "
                    f"{self.min_input_size()}x{self.min_input_size()} px"
                )
            shapes.append(new)
            shape = new
        return shapes

    def _fixed_size_hint(self):
        h, w = self.input_shape[:2]
        return f"{h}x{w} px" if h else "a matching"

    def min_input_size(self) -> int:
        """Smallest square input for which no spatial layer is empty."""
        size = 1
        for layer in reversed(self.layers):
            if layer.kind == "maxpool2d":
                size *= layer.pool_size[0]
            elif layer.kind == "conv2d" and layer.padding == "valid":
                size += layer.kernel.shape[0] - 1
        return size

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

    def _flat(self, key, size, dtype=None):
        """The workspace's flat buffer ``key`` of at least ``size`` elements (grown, never shrunk)."""
        flat = self._workspace.get(key)
        if flat is None or flat.size < size:
            flat = self._workspace[key] = None  # free the old one first
            flat = self._workspace[key] = self.backend.empty((max(size, 1),), dtype)
        return flat

    def _buffer(self, role, index, shape, dtype=None):
        """A view shaped ``shape`` on the flat buffer of (role, layer index): one per role and
        layer, grown to the largest shape asked for, whatever the input sizes (DeepDream's octaves,
        tiles), not one per shape. A newer trace reuses it (``Trace._check_current``)."""
        dtype = np.dtype(self.backend.dtype if dtype is None else dtype)
        size = int(np.prod(shape))
        return self._flat((role, index, dtype.str), size, dtype)[:size].reshape(shape)

    def _arena(self, slot, shape, capacity):
        """A view shaped ``shape`` on gradient arena ``slot`` (0 or 1), a flat buffer of at least
        ``capacity`` elements: the backward's gradients alternate between the two arenas, so two
        buffers of the largest gradient serve every layer (not two per shape)."""
        return self._flat(("arena", slot), capacity)[: int(np.prod(shape))].reshape(shape)

    def trace(self, x, upto=None) -> "Trace":
        """Forward pass up to layer ``upto`` (default: the last), keeping what backward needs."""
        last = len(self.layers) - 1 if upto is None else self.layer_index(upto)
        if isinstance(x, np.ndarray) or not hasattr(x, "shape"):
            x = self.check_input(x, last)
        self._generation += 1
        return Trace(self, self.backend.to_device(x) if isinstance(x, np.ndarray) else x, last)

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
        grads = trace.backward({layer: grad_output}, relu=relu)
        return self.backend.to_host(grads[INPUT])


class Trace:
    """The state of one forward pass: every layer's output and the max-pool argmax."""

    def __init__(self, model: Model, x, last: int):
        self.model = model
        self.generation = model._generation
        self.input = x
        self.last = last
        ops, layers, buf = model.backend.ops, model.layers, model._buffer
        n = x.shape[0]
        self.outputs, self.argmax, self.logits = [], {}, None
        shape_in = tuple(x.shape[1:])
        h = x
        for i in range(last + 1):
            spec = layers[i]
            kernel, bias = model._params[i]
            shape_out = layer_output_shape(spec, shape_in)
            if spec.kind in ("conv2d", "dense"):
                fused_relu = spec.activation == "relu"
                out = buf("out", i, (n,) + shape_out)
                if spec.kind == "conv2d":
                    ops.conv2d_forward(h, kernel, bias, conv_padding(spec), fused_relu, out, **model._conv_options)
                else:
                    ops.dense_forward(h, kernel, bias, fused_relu, out)
                if spec.activation in ("softmax", "sigmoid"):
                    self.logits = out
                    activated = buf("act", i, out.shape)
                    getattr(ops, f"{spec.activation}_forward")(out, activated)
                    out = activated
                h = out
            elif spec.kind == "maxpool2d":
                out = buf("out", i, (n,) + shape_out)
                argmax = buf("argmax", i, out.shape, np.int32)
                ops.maxpool_forward(h, spec.pool_size, out, argmax)
                self.argmax[i] = argmax
                h = out
            elif spec.kind == "flatten":
                h = h.reshape((n,) + shape_out)
            self.outputs.append(h)
            shape_in = shape_out

    def _check_current(self):
        if self.generation != self.model._generation:
            raise RuntimeError("this trace's buffers were reused by a newer trace of the model")

    def output(self, name):
        """A layer's output (device array); 'logits' = the last layer before its activation."""
        self._check_current()
        i = self.model.layer_index(name)
        if i > self.last:
            raise ValueError(f"layer {name!r} lies beyond this trace (it stops at layer {self.last})")
        if name == LOGITS:
            return self.logits if self.logits is not None else self.outputs[i]
        return self.outputs[i]

    def backward(self, grads: dict, relu="standard", wrt=(INPUT,)) -> dict:
        """Backpropagate gradients injected at layer outputs; return them at ``wrt``.

        ``grads`` maps layer names (or 'logits') to arrays shaped like those outputs: the pass
        computes d sum_l sum(grads[l] * l(x)) / d(each name in wrt). ``wrt`` holds 'input' and/or
        layer names. ``relu`` selects the ReLU backward: 'standard', 'guided' or 'deconv'.
        The returned arrays belong to the caller (later passes do not overwrite them).
        """
        self._check_current()
        if relu not in RELU_MODES:
            raise ConvscopeError(f"unknown ReLU backward mode {relu!r}: use one of {', '.join(RELU_MODES)}")
        mode = RELU_MODES[relu]
        model, backend = self.model, self.model.backend
        ops, layers, buf = backend.ops, model.layers, model._buffer
        injected = {}
        for name, g in grads.items():
            target = self.output(name)
            if tuple(g.shape) != tuple(target.shape):
                raise ConvscopeError(
                    f"gradient for {name!r} has shape {tuple(g.shape)}, the layer output has "
                    f"{tuple(target.shape)}"
                )
            injected[name] = backend.to_device(g) if isinstance(g, np.ndarray) else g
        wrt_index = {}
        for name in wrt:
            if name != INPUT:
                wrt_index[model.layer_index(name)] = name
        start = max(model.layer_index(name) for name in injected)
        # without 'input' the pass can stop at the shallowest layer asked for
        stop = 0 if INPUT in wrt or not wrt_index else min(wrt_index)
        result = {}
        g = None
        slot = 0  # gradients alternate between two arenas: each is dead once used
        capacity = max(int(np.prod(h.shape)) for h in [self.input] + self.outputs[stop:start])
        for i in range(start, stop - 1, -1):
            spec = layers[i]
            g = self._inject(g, injected.get(spec.name), i)
            if i in wrt_index:
                result[wrt_index[i]] = backend.copy(g) if g is not None else backend.zeros(self.outputs[i].shape)
                if i == stop and INPUT not in wrt:
                    break
            if spec.kind in ("conv2d", "dense"):
                if g is not None:
                    g = self._activation_backward(spec, i, g, mode)
                if i == len(layers) - 1 and LOGITS in injected:
                    g = self._inject(g, injected[LOGITS], i, role="glogit")
                if g is None:
                    continue
                kernel = model._params[i][0]
                h_in = self.outputs[i - 1] if i > 0 else self.input
                slot ^= 1
                g_in = model._arena(slot, h_in.shape, capacity)
                if spec.kind == "conv2d":
                    ops.conv2d_backward_input(g, kernel, conv_padding(spec), g_in, **model._conv_options)
                else:
                    ops.dense_backward_input(g, kernel, g_in)
                g = g_in
            elif spec.kind == "maxpool2d" and g is not None:
                h_in = self.outputs[i - 1] if i > 0 else self.input
                slot ^= 1
                g_in = model._arena(slot, h_in.shape, capacity)
                ops.maxpool_backward(g, self.argmax[i], spec.pool_size, g_in)
                g = g_in
            elif spec.kind == "flatten" and g is not None:
                h_in = self.outputs[i - 1] if i > 0 else self.input
                g = g.reshape(h_in.shape)
        if INPUT in wrt:
            result[INPUT] = backend.copy(g) if g is not None else backend.zeros(self.input.shape)
        return result

    def _inject(self, g, addend, i, role="ginj"):
        """g + addend, in a buffer of this pass (never writing into the caller's array)."""
        if addend is None:
            return g
        backend = self.model.backend
        if g is None:
            total = self.model._buffer(role, i, addend.shape)
            if backend.on_host:
                np.copyto(total, addend)
            else:
                total.copy_to_device(addend)
            return total
        return backend.accumulate(g, addend)

    def _activation_backward(self, spec, i, g, mode):
        ops = self.model.backend.ops
        y = self.outputs[i]
        if spec.activation == "linear":
            return g
        if spec.activation == "relu":  # elementwise: in place (g is always this pass's buffer)
            ops.relu_backward(g, y, mode, g)
            return g
        g_pre = self.model._buffer("gpre", i, g.shape)
        getattr(ops, f"{spec.activation}_backward")(g, y, g_pre)
        return g_pre
