"""Reference VGG16 implementations in PyTorch and Keras 3, for the whole-model tests and fixtures.

Both read the same Keras h5 weight file the engine reads (the official weights-only layout, as
written by ``tests.synthetic.write_vgg16_official``) and compute, for an NHWC float32 input:

* every layer's output with Keras semantics: a conv or dense layer's output is after its
  activation (ReLU, or softmax for ``predictions``); ``"logits"`` is the pre-softmax output of the
  last layer. 4-D outputs are NHWC, as the engine returns them.
* input gradients ``d sum(g * layer(x)) / dx`` for one layer and one ``g``, with the ReLU backward
  in ``"standard"`` mode or ``"guided"`` mode (guided backprop: the gradient passes a ReLU only
  where the forward output is > 0 AND the incoming gradient is > 0, implemented, as
  pytorch-grad-cam and Captum do, with a custom autograd Function).

Dev-only: torch is imported at module level, Keras lazily (with ``KERAS_BACKEND=torch`` so that
Keras tensors are torch tensors and torch autograd differentiates the Keras model). The engine
itself never imports this file or either framework.
"""

import os

import h5py
import numpy as np
import torch
import torch.nn.functional as F

from engine.architectures import vgg16_layers
from tests.metrics import rel_err

RELU_MODES = ("standard", "guided")


# --------------------------------------------------------------------------------------------
# The weight file


def read_official_h5(path) -> dict:
    """{layer name: [arrays in weight_names order]} following layer_names / weight_names."""

    def text(v):
        return v.decode("utf8") if isinstance(v, bytes) else str(v)

    arrays = {}
    with h5py.File(path, "r") as f:
        for name in map(text, f.attrs["layer_names"]):
            group = f[name]
            names = [text(w) for w in group.attrs.get("weight_names", [])]
            if names:
                arrays[name] = [np.asarray(group[w]) for w in names]
    return arrays


def file_has_top(path) -> bool:
    with h5py.File(path, "r") as f:
        return any(
            (v.decode() if isinstance(v, bytes) else v) == "predictions"
            for v in f.attrs["layer_names"]
        )


# --------------------------------------------------------------------------------------------
# Fragile decisions
#
# An input gradient through ReLUs and max-pools is piecewise linear in the input: which units pass
# the gradient (pre-activation > 0) and which window element wins each pool are discrete
# decisions made in the forward pass. Where a pre-activation is within float32 rounding of zero, or
# a pool window's two largest values are within rounding of each other, two correct float32
# implementations may decide differently, and the input gradient then differs by far more than
# rounding (one flipped pool window in block4 of VGG16 at 224x224 moves the input gradient by
# ~5e-3 relative). These helpers find such sites, so tests can tell a flip from a bug.


def relu_sites(pre: np.ndarray, tau: float) -> np.ndarray:
    """(k, 4) NHWC indices where |pre-activation| < tau * rms(pre)."""
    rms = np.sqrt(np.mean(np.square(pre, dtype=np.float64)))
    return np.argwhere(np.abs(pre) < tau * rms).astype(np.int32)


def relu_decisions(out: np.ndarray, sites: np.ndarray) -> np.ndarray:
    """1 where the (post-ReLU) output at each site is > 0, else 0."""
    return (out[tuple(sites.T)] > 0).astype(np.int8)


def _windows(conv_out, pool):
    n, h, w, c = conv_out.shape
    ph, pw = pool
    ho, wo = h // ph, w // pw
    v = conv_out[:, : ho * ph, : wo * pw, :].reshape(n, ho, ph, wo, pw, c)
    return v.transpose(0, 1, 3, 5, 2, 4).reshape(n, ho, wo, c, ph * pw)


def pool_sites(conv_out: np.ndarray, tau: float, pool=(2, 2)) -> np.ndarray:
    """(k, 4) pooled NHWC indices whose window's top two values differ by < tau * rms(conv_out)
    (windows whose maximum is 0 are ignored: their gradient is stopped by the ReLU anyway)."""
    rms = np.sqrt(np.mean(np.square(conv_out, dtype=np.float64)))
    top2 = np.sort(_windows(conv_out, pool), axis=-1)[..., -2:]
    close = (top2[..., 1] > 0) & (top2[..., 1] - top2[..., 0] < tau * rms)
    return np.argwhere(close).astype(np.int32)


def pool_decisions(conv_out: np.ndarray, sites: np.ndarray, pool=(2, 2)) -> np.ndarray:
    """The winning position (dy * pw + dx, first maximum) of each site's window."""
    return np.argmax(_windows(conv_out, pool)[tuple(sites.T)], axis=-1).astype(np.int8)


def fragile_sites(table, pre: dict, acts: dict, tau: float = 3e-5) -> dict:
    """{layer: sites} for every conv layer (ReLU sites) and max-pool layer (window sites).

    ``pre`` holds conv pre-activations, ``acts`` layer outputs (float64 preferably); a pool's
    sites index its output, its decision is taken from the conv layer feeding it.
    """
    sites, previous = {}, None
    for t in table:
        if t["kind"] == "conv2d" and t["name"] in pre:
            sites[t["name"]] = relu_sites(pre[t["name"]], tau)
        elif t["kind"] == "maxpool2d" and previous in acts:
            sites[t["name"]] = pool_sites(acts[previous], tau, t["pool_size"])
        previous = t["name"]
    return sites


def decisions_at(table, sites: dict, acts: dict) -> dict:
    """{layer: decisions at its fragile sites} from one implementation's layer outputs."""
    feeding = {}
    previous = None
    for t in table:
        feeding[t["name"]] = previous
        previous = t["name"]
    out = {}
    for t in table:
        name = t["name"]
        if name not in sites:
            continue
        if t["kind"] == "conv2d":
            out[name] = relu_decisions(acts[name], sites[name])
        else:
            out[name] = pool_decisions(acts[feeding[name]], sites[name], t["pool_size"])
    return out


# --------------------------------------------------------------------------------------------
# PyTorch


class GuidedReLU(torch.autograd.Function):
    """ReLU whose backward passes the gradient only where output > 0 and gradient > 0."""

    @staticmethod
    def forward(ctx, z):
        y = z.clamp(min=0)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return grad * ((y > 0) & (grad > 0)).to(grad.dtype)


def guided_relu(z):
    return GuidedReLU.apply(z)


class ForcedReLU(torch.autograd.Function):
    """ReLU whose backward uses a given mask (another implementation's decisions) instead of its
    own forward's; guided additionally keeps only positive incoming gradients."""

    @staticmethod
    def forward(ctx, z, mask, guided):
        ctx.save_for_backward(mask)
        ctx.guided = guided
        return z.clamp(min=0)

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        keep = mask & (grad > 0) if ctx.guided else mask
        return grad * keep.to(grad.dtype), None, None


class ForcedMaxPool(torch.autograd.Function):
    """2-D max-pool (NCHW) whose backward routes each gradient to given flat argmax indices."""

    @staticmethod
    def forward(ctx, x, indices, pool):
        ctx.save_for_backward(indices)
        ctx.pool, ctx.size = pool, x.shape[-2:]
        return F.max_pool2d(x, pool)

    @staticmethod
    def backward(ctx, grad):
        (indices,) = ctx.saved_tensors
        return F.max_unpool2d(grad, indices, ctx.pool, output_size=ctx.size), None, None


def decisions_from_outputs(table, acts: dict) -> dict:
    """Every ReLU mask and max-pool argmax implied by one implementation's layer outputs (NHWC
    numpy, float32 or 64): {"relu": {layer: bool NHWC or (N, n)}, "pool": {layer: NCHW flat
    indices into the feeding map, as torch's max_pool2d returns them}}."""
    relu, pool, previous = {}, {}, None
    for t in table:
        name = t["name"]
        if t.get("activation") == "relu":
            relu[name] = np.asarray(acts[name]) > 0
        elif t["kind"] == "maxpool2d":
            feed = np.asarray(acts[previous])
            n, h, w, c = feed.shape
            ph, pw = t["pool_size"]
            win = np.argmax(_windows(feed, (ph, pw)), axis=-1)  # (n, ho, wo, c), first maximum
            ho, wo = win.shape[1:3]
            rows = np.arange(ho)[None, :, None, None] * ph + win // pw
            cols = np.arange(wo)[None, None, :, None] * pw + win % pw
            pool[name] = (rows * w + cols).transpose(0, 3, 1, 2).astype(np.int64)
        previous = name
    return {"relu": relu, "pool": pool}


def engine_decisions(model, table, x) -> dict:
    """``decisions_from_outputs`` of the engine's own forward pass on x (an engine ``Model``)."""
    names = [t["name"] for t in table if t["kind"] in ("conv2d", "dense")]
    return decisions_from_outputs(table, model.forward(x, outputs=names))


def decision_margin(torch_model, x, forced) -> float:
    """The largest margin, relative to its layer's rms, among the decisions of ``forced`` that
    torch_model's own forward on x takes the other way (0 when none): a near tie is ~1e-6 or
    less, so a large value means one of the two forwards is wrong, not rounding."""
    pre = {}
    acts = torch_model.outputs(x, pre=pre)
    mine = decisions_from_outputs(torch_model.table, acts)
    margin, previous = 0.0, None
    for t in torch_model.table:
        name = t["name"]
        if name in forced["relu"]:
            differ = forced["relu"][name] != mine["relu"][name]
            if differ.any():
                z = pre.get(name, acts[name])  # dense layers: their output (0 where torch cut it)
                rms = np.sqrt(np.mean(np.square(z, dtype=np.float64)))
                margin = max(margin, float(np.abs(z[differ]).max() / rms))
        elif t["kind"] == "maxpool2d":
            differ = forced["pool"][name] != mine["pool"][name]  # NCHW
            if differ.any():
                win = np.sort(_windows(acts[previous], t["pool_size"]), axis=-1)  # NHWC windows
                gap = (win[..., -1] - win[..., -2]).transpose(0, 3, 1, 2)
                rms = np.sqrt(np.mean(np.square(acts[previous], dtype=np.float64)))
                margin = max(margin, float(gap[differ].max() / rms))
        previous = name
    return margin


def forced_gradients(model, torch_model, x, layer, grad_output, relu="standard"):
    """(gradients, margin): torch_model's input gradients of sum(grad_output * layer(x)), one row
    of x at a time, each following the ReLU masks and pool winners of the engine ``model``'s own
    forward on that row, and the largest ``decision_margin`` met.

    This is the reference for an engine gradient on a network with near ties: every number is
    PyTorch's, only the discrete decisions are the engine's (which way a float32 near tie falls
    depends on the CPU), and the margin shows they differ from PyTorch's only at ties.
    """
    grads, margin = [], 0.0
    for row, g in zip(np.asarray(x), np.asarray(grad_output)):
        forced = engine_decisions(model, torch_model.table, row[None])
        grads.append(torch_model.input_gradient(row[None], layer, g[None], relu, forced=forced)[0])
        margin = max(margin, decision_margin(torch_model, row[None], forced))
    return np.stack(grads), margin


def _relu(mode):
    if mode == "standard":
        return F.relu
    if mode == "guided":
        return guided_relu
    raise ValueError(f"unknown ReLU mode {mode!r}; expected one of {RELU_MODES}")


class TorchVGG16(torch.nn.Module):
    """VGG16 as torch modules, weights from a Keras h5 file; takes and returns NHWC tensors."""

    def __init__(self, path, include_top=None, dtype=torch.float32):
        super().__init__()
        arrays = read_official_h5(path)
        self.include_top = file_has_top(path) if include_top is None else include_top
        self.table = vgg16_layers(self.include_top)
        self.layers = torch.nn.ModuleDict()
        for t in self.table:
            if t["kind"] == "conv2d":
                kernel, bias = arrays[t["name"]]
                kh, kw, c_in, c_out = kernel.shape
                conv = torch.nn.Conv2d(c_in, c_out, (kh, kw), padding=(kh // 2, kw // 2))
                # Keras kernel (kh, kw, in, out) -> torch (out, in, kh, kw); both cross-correlate.
                conv.weight.data = torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy())
                conv.bias.data = torch.from_numpy(bias.copy())
                self.layers[t["name"]] = conv
            elif t["kind"] == "dense":
                kernel, bias = arrays[t["name"]]
                lin = torch.nn.Linear(*kernel.shape)
                lin.weight.data = torch.from_numpy(kernel.T.copy())  # (in, out) -> (out, in)
                lin.bias.data = torch.from_numpy(bias.copy())
                self.layers[t["name"]] = lin
        self.to(dtype)
        self.dtype = dtype
        self.requires_grad_(False)  # only input gradients are needed

    @property
    def layer_names(self):
        """Every output name forward() can return, in order ("logits" just before "predictions")."""
        names = []
        for t in self.table:
            if t["name"] == "predictions":
                names.append("logits")
            names.append(t["name"])
        return names

    def forward(self, x, relu="standard", stop_at=None, pre=None, forced=None):
        """{name: output} for an NHWC tensor x; 4-D outputs NHWC. Stops after layer stop_at.

        If ``pre`` is a dict, each conv layer's pre-activation (NHWC) is also stored in it.
        ``forced`` (from ``decisions_from_outputs``) makes the backward follow another
        implementation's ReLU masks and pool winners; the forward values are unchanged.
        """
        act = _relu(relu)
        if forced is not None:
            guided = relu == "guided"
            _relu(relu)

            def forced_act(z, name):
                mask = torch.from_numpy(forced["relu"][name])
                return ForcedReLU.apply(z, mask.permute(0, 3, 1, 2) if z.dim() == 4 else mask, guided)
        
        h = x.permute(0, 3, 1, 2)  # NHWC -> NCHW
        out = {}
        for t in self.table:
            name, kind = t["name"], t["kind"]
            if kind == "conv2d":
                z = self.layers[name](h)
                if pre is not None:
                    pre[name] = z.permute(0, 2, 3, 1)
                h = act(z) if forced is None else forced_act(z, name)
            elif kind == "maxpool2d":
                if forced is None:
                    h = F.max_pool2d(h, t["pool_size"])
                else:
                    indices = torch.from_numpy(forced["pool"][name])
                    h = ForcedMaxPool.apply(h, indices, t["pool_size"])
            elif kind == "flatten":
                h = h.permute(0, 2, 3, 1).reshape(h.shape[0], -1)  # Keras' (h, w, c) order
            elif kind == "dense":
                z = self.layers[name](h)
                if t["activation"] == "relu":
                    h = act(z) if forced is None else forced_act(z, name)
                elif t["activation"] == "softmax":
                    out["logits"] = z
                    if stop_at == "logits":
                        return out
                    h = torch.softmax(z, dim=-1)
                else:
                    h = z
            out[name] = h.permute(0, 2, 3, 1) if h.dim() == 4 else h
            if name == stop_at:
                return out
        return out

    def _input(self, x, requires_grad=False):
        return torch.tensor(np.asarray(x), dtype=self.dtype).requires_grad_(requires_grad)

    def outputs(self, x, names=None, pre=None) -> dict:
        """{name: float numpy array} for every layer (or the given names), standard ReLUs.

        If ``pre`` is a dict, it receives every conv layer's pre-activation as numpy arrays.
        """
        pre_t = {} if pre is not None else None
        with torch.no_grad():
            acts = self(self._input(x), pre=pre_t)
        if pre is not None:
            pre.update({n: v.numpy() for n, v in pre_t.items()})
        names = self.layer_names if names is None else names
        return {n: acts[n].numpy() for n in names}

    def input_gradient(self, x, layer, grad_output, relu="standard", forced=None) -> np.ndarray:
        """d sum(grad_output * layer(x)) / dx, NHWC, in this model's dtype.

        ``forced``: see ``forward``; the gradient another implementation should get given the
        ReLU and max-pool decisions its own forward pass made.
        """
        xt = self._input(x, requires_grad=True)
        y = self(xt, relu=relu, stop_at=layer, forced=forced)[layer]
        g = torch.tensor(np.asarray(grad_output), dtype=self.dtype)
        if g.shape != y.shape:
            raise ValueError(f"grad_output {tuple(g.shape)} != {layer} output {tuple(y.shape)}")
        (y * g).sum().backward()
        return xt.grad.numpy()

    def class_logit_gradient(self, x, class_index, relu="standard") -> np.ndarray:
        """d logits[:, class_index] / dx (one class for the whole batch, or one per image)."""
        n = np.asarray(x).shape[0]
        g = np.zeros((n, 1000), dtype=np.float64)
        g[np.arange(n), np.broadcast_to(class_index, (n,))] = 1.0
        return self.input_gradient(x, "logits", g, relu=relu)


# --------------------------------------------------------------------------------------------
# Keras 3 (torch backend)


def _keras():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras

    if keras.backend.backend() != "torch":
        raise RuntimeError(
            f"the Keras reference needs KERAS_BACKEND=torch, got {keras.backend.backend()!r}"
        )
    return keras


class KerasVGG16:
    """keras.applications.VGG16 loaded from the h5 file, plus a twin whose last Dense is linear.

    ``input_shape`` is (H, W, 3); with the classifier it must be (224, 224, 3).
    """

    def __init__(self, path, input_shape, include_top=None):
        keras = _keras()
        self.keras = keras
        self.include_top = file_has_top(path) if include_top is None else include_top
        self.model = keras.applications.VGG16(
            weights=str(path), include_top=self.include_top, input_shape=tuple(input_shape)
        )
        self.logits_model = None
        if self.include_top:
            self.logits_model = keras.applications.VGG16(
                weights=str(path),
                include_top=True,
                input_shape=tuple(input_shape),
                classifier_activation=None,
            )
        self._check_loaded(path)
        self._submodels = {}

    def _check_loaded(self, path):
        """Keras must hold the file's numbers, not a random initialization."""
        arrays = read_official_h5(path)
        checks = ["block1_conv1", "block5_conv3"] + (["predictions"] if self.include_top else [])
        for model in filter(None, (self.model, self.logits_model)):
            for name in checks:
                kernel, bias = (np.asarray(v) for v in model.get_layer(name).get_weights())
                if not (np.array_equal(kernel, arrays[name][0]) and np.array_equal(bias, arrays[name][1])):
                    raise RuntimeError(f"Keras did not load {name} from {path}")

    @property
    def layer_names(self):
        names = [layer.name for layer in self.model.layers[1:]]  # skip the InputLayer
        if self.include_top:
            names.insert(names.index("predictions"), "logits")
        return names

    def _submodel(self, name):
        """A keras.Model from the input to one layer's output ("logits": the linear twin's)."""
        if name not in self._submodels:
            if name == "logits":
                src, layer = self.logits_model, "predictions"
            else:
                src, layer = self.model, name
            self._submodels[name] = self.keras.Model(src.inputs, src.get_layer(layer).output)
        return self._submodels[name]

    def outputs(self, x, names=None) -> dict:
        """{name: float32 numpy array}: one multi-output keras.Model, plus the logits twin."""
        names = self.layer_names if names is None else list(names)
        plain = [n for n in names if n != "logits"]
        model = self.keras.Model(self.model.inputs, [self.model.get_layer(n).output for n in plain])
        xt = torch.tensor(np.asarray(x, dtype=np.float32))
        with torch.no_grad():
            values = model(xt)
            if not isinstance(values, (list, tuple)):
                values = [values]
            out = {n: v.detach().cpu().numpy() for n, v in zip(plain, values)}
            if "logits" in names:
                out["logits"] = self._submodel("logits")(xt).detach().cpu().numpy()
        return {n: out[n] for n in names}

    def input_gradient(self, x, layer, grad_output, relu="standard") -> np.ndarray:
        """d sum(grad_output * layer(x)) / dx by torch autograd through the Keras model."""
        model = self._submodel(layer)
        xt = torch.tensor(np.asarray(x, dtype=np.float32), requires_grad=True)
        with self._relu_mode(relu):
            y = model(xt)
        g = torch.tensor(np.asarray(grad_output, dtype=np.float32))
        if g.shape != y.shape:
            raise ValueError(f"grad_output {tuple(g.shape)} != {layer} output {tuple(y.shape)}")
        (y * g).sum().backward()
        return xt.grad.detach().cpu().numpy()

    def class_logit_gradient(self, x, class_index, relu="standard") -> np.ndarray:
        n = np.asarray(x).shape[0]
        g = np.zeros((n, 1000), dtype=np.float32)
        g[np.arange(n), np.broadcast_to(class_index, (n,))] = 1.0
        return self.input_gradient(x, "logits", g, relu=relu)

    def _relu_mode(self, relu):
        """Context manager: swap every ReLU activation for the guided one while it is open."""
        keras = self.keras
        outer = self

        class _Swap:
            def __enter__(self):
                self.saved = []
                if relu == "standard":
                    return self
                _relu(relu)  # validates the name
                for model in filter(None, (outer.model, outer.logits_model)):
                    for layer in model.layers:
                        if getattr(layer, "activation", None) is keras.activations.relu:
                            self.saved.append((layer, layer.activation))
                            layer.activation = guided_relu
                if not self.saved:
                    raise RuntimeError("found no ReLU activation to replace in the Keras model")
                return self

            def __exit__(self, *exc):
                for layer, activation in self.saved:
                    layer.activation = activation
                return False

        return _Swap()
