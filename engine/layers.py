"""The table of layer kinds: each kind's geometry and its forward/backward pair, side by side.

``LAYERS[spec.kind]`` holds one small object per layer kind (tinygrad's one class per op, llm.c's
``*_forward`` / ``*_backward`` pairs), ``ACTIVATIONS[spec.activation]`` one per activation:

* ``window(spec)``: a spatial layer's ``Window``, None when each unit sees the whole input;
* ``input_shape(spec)`` / ``output_shape(spec, shape)``: the input shape the layer requires (None:
  any) and its output shape for an input shape, both without batch;
* ``forward(trace, i, spec, h, shape)``: layer i's output (``shape`` with batch) for input ``h``,
  in the model's buffers (``trace.own(i, role, shape)`` for a buffer that holds only layer i's
  output, which a releasing backward may reuse once it is dead; a view of the input, as Flatten's,
  is not owned); the trace keeps what the backward needs (``trace.argmax[i]``, ``trace.logits``
  before a softmax or sigmoid);
* ``backward(trace, i, spec, g, new_gradient)``: d/d input for ``g`` = d/d (output before the
  activation), in a buffer from ``new_gradient(shape)``; never a weight gradient.

An activation's ``backward(trace, i, g, mode)`` maps d/d output to d/d (output before it); ``mode``
is a ``kernels.RELU_MODES`` value. ReLU is fused into the conv/dense forward kernel. Arrays are
NHWC, (N, n) after flatten, on the model's backend.
"""

from dataclasses import dataclass

import numpy as np

from kernels import argmax_dtype


@dataclass(frozen=True)
class Window:
    """How a spatial layer reads its input, per axis (height, width): output unit ``i`` reads the
    ``kernel`` input positions from ``i * stride - before``; ``before``/``after`` are the zero
    padding on each side. Output side = (n + before + after - kernel) // stride + 1."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    before: tuple[int, int]
    after: tuple[int, int]

    def output_hw(self, shape) -> tuple[int, int]:
        sides = zip(shape[:2], self.kernel, self.stride, self.before, self.after)
        return tuple((int(n) + b + a - k) // s + 1 for n, k, s, b, a in sides)


def conv_padding(spec):
    """(top, left) zero padding of a conv layer: Keras 'same' pads (k - 1) // 2 before."""
    if spec.padding == "same":
        kh, kw = spec.kernel.shape[:2]
        return ((kh - 1) // 2, (kw - 1) // 2)
    return (0, 0)


class Layer:
    """Defaults: units see the whole input, which may have any shape."""

    def window(self, spec):
        return None

    def input_shape(self, spec):
        return None


class Conv2D(Layer):
    """(N, H, W, C_in) -> (N, H', W', C_out): cross-correlation with (kh, kw, C_in, C_out), stride 1."""

    def window(self, spec):
        kernel, before = spec.kernel.shape[:2], conv_padding(spec)
        after = tuple(k - 1 - b for k, b in zip(kernel, before)) if spec.padding == "same" else (0, 0)
        return Window(tuple(kernel), (1, 1), before, after)

    def output_shape(self, spec, shape):
        return self.window(spec).output_hw(shape) + (spec.kernel.shape[3],)

    def forward(self, trace, i, spec, h, shape):
        model, activation = trace.model, ACTIVATIONS[spec.activation]
        out = trace.own(i, "out", shape)
        options, ops = model._conv_options, model.backend.ops
        kernel, bias = model._params[i]
        channels = trace.channels.get(i)
        if channels is None:
            ops.conv2d_forward(h, kernel, bias, conv_padding(spec), activation.fused, out, **options)
        else:  # one channel per sample (host arrays): the others read zero
            out.fill(0)
            one = model._buffer("one channel", i, (1,) + shape[1:3] + (1,))
            for n, c in enumerate(channels):
                ops.conv2d_forward(h[n : n + 1], kernel[..., c : c + 1], bias[c : c + 1], conv_padding(spec),
                                   activation.fused, one, **options)
                out[n, :, :, c] = one[0, :, :, 0]
        return activation.forward(trace, i, out)

    def backward(self, trace, i, spec, g, new_gradient):
        model = trace.model
        g_in = new_gradient(trace.layer_input(i).shape)
        kernel, options, ops = model._params[i][0], model._conv_options, model.backend.ops
        channels = trace.channels.get(i)
        if channels is None:
            ops.conv2d_backward_input(g, kernel, conv_padding(spec), g_in, **options)
        else:  # g is zero outside each sample's channel
            one = model._buffer("one channel", i, (1,) + g.shape[1:3] + (1,))
            for n, c in enumerate(channels):
                one[0, :, :, 0] = g[n, :, :, c]
                ops.conv2d_backward_input(one, kernel[..., c : c + 1], conv_padding(spec), g_in[n : n + 1], **options)
        return g_in


class Dense(Layer):
    """(N, n_in) -> (N, n_out): x @ kernel (n_in, n_out) + bias."""

    def input_shape(self, spec):
        return (spec.kernel.shape[0],)

    def output_shape(self, spec, shape):
        return (spec.kernel.shape[1],)

    def forward(self, trace, i, spec, h, shape):
        model, activation = trace.model, ACTIVATIONS[spec.activation]
        out = trace.own(i, "out", shape)
        model.backend.ops.dense_forward(h, *model._params[i], activation.fused, out)
        return activation.forward(trace, i, out)

    def backward(self, trace, i, spec, g, new_gradient):
        g_in = new_gradient(trace.layer_input(i).shape)
        trace.model.backend.ops.dense_backward_input(g, trace.model._params[i][0], g_in)
        return g_in


class MaxPool2D(Layer):
    """(N, H, W, C) -> (N, H // ph, W // pw, C): max over (ph, pw) windows, stride = window."""

    def window(self, spec):
        return Window(tuple(spec.pool_size), tuple(spec.pool_size), (0, 0), (0, 0))

    def output_shape(self, spec, shape):
        return self.window(spec).output_hw(shape) + (shape[2],)

    def forward(self, trace, i, spec, h, shape):
        out = trace.own(i, "out", shape)
        argmax = trace.argmax[i] = trace.model._buffer("argmax", i, shape, argmax_dtype(spec.pool_size))
        trace.model.backend.ops.maxpool_forward(h, spec.pool_size, out, argmax)
        return out

    def backward(self, trace, i, spec, g, new_gradient):
        g_in = new_gradient(trace.layer_input(i).shape)
        trace.model.backend.ops.maxpool_backward(g, trace.argmax[i], spec.pool_size, g_in)
        return g_in


class Flatten(Layer):
    """(N, H, W, C) -> (N, H * W * C) in (h, w, c) order: a view, no copy."""

    def output_shape(self, spec, shape):
        return (int(np.prod(shape)),)

    def forward(self, trace, i, spec, h, shape):
        return h.reshape(shape)

    def backward(self, trace, i, spec, g, new_gradient):
        return g.reshape(trace.layer_input(i).shape)


class Dropout(Layer):
    """The identity at inference, on any shape."""

    def window(self, spec):
        return Window((1, 1), (1, 1), (0, 0), (0, 0))

    def output_shape(self, spec, shape):
        return tuple(shape)

    def forward(self, trace, i, spec, h, shape):
        return h

    def backward(self, trace, i, spec, g, new_gradient):
        return g


class Linear:
    """No activation."""

    fused = False  # whether the conv/dense kernel applies it (ReLU only)

    def forward(self, trace, i, out):
        return out

    def backward(self, trace, i, g, mode):
        return g


class ReLU(Linear):
    fused = True

    def backward(self, trace, i, g, mode):
        # elementwise and in place: g is always a buffer of this backward pass
        trace.model.backend.ops.relu_backward(g, trace.outputs[i], mode, g)
        return g


class Normalising(Linear):
    """Softmax or sigmoid over the layer's pre-activation output (the logits), a separate op."""

    def __init__(self, name):
        self.name = name

    def forward(self, trace, i, out):
        trace.logits = out
        activated = trace.own(i, "act", out.shape)
        getattr(trace.model.backend.ops, f"{self.name}_forward")(out, activated)
        return activated

    def backward(self, trace, i, g, mode):
        g_pre = trace.model._buffer("gpre", i, g.shape)
        getattr(trace.model.backend.ops, f"{self.name}_backward")(g, trace.outputs[i], g_pre)
        return g_pre


LAYERS = {"conv2d": Conv2D(), "maxpool2d": MaxPool2D(), "flatten": Flatten(), "dense": Dense(), "dropout": Dropout()}
ACTIVATIONS = {
    "linear": Linear(), "relu": ReLU(), "sigmoid": Normalising("sigmoid"), "softmax": Normalising("softmax")
}


def layer_output_shape(spec, in_shape) -> tuple:
    """Output shape (without batch) of one layer for an input shape (without batch)."""
    return LAYERS[spec.kind].output_shape(spec, tuple(in_shape))
