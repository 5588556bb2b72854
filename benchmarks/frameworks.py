"""The contenders: convscope's engine, PyTorch (eager), ONNX Runtime and Keras 3 on one weight file.

Each contender turns a *task* into a zero-argument callable that does the work once and returns
its result as NumPy (the same callable is validated and then timed). Tasks:

* ``("forward", x, g)``       the VGG16 conv stack, NHWC input -> block5_pool (NHWC)
* ``("forward_grad", x, g)``  d sum(block5_pool(x) * g) / dx, the input gradient (NHWC)
* ``("conv", i, x)`` / ``("conv_backward", i, g)``: conv layer i alone (bias + ReLU) forward, or
  its input gradient (the transposed convolution, no ReLU backward), NHWC in and out.

Conventions, chosen so that each framework runs as its users would run it:
* PyTorch gets NCHW contiguous tensors (its default layout; the NHWC -> NCHW copy happens once,
  outside the timed call), forward under ``torch.no_grad()``, the input gradient by autograd with
  ``requires_grad`` on the input only (weights frozen). Per-layer backward calls
  ``aten.convolution_backward`` with only the input gradient requested, what autograd runs.
* ONNX Runtime runs the same PyTorch module exported with ``torch.onnx.export`` (legacy
  TorchScript exporter, opset 17, dynamic batch and size), forward only, all graph optimisations.
* Keras 3 runs ``keras.applications.VGG16`` (via ``tests.reference_models.KerasVGG16``) on the
  torch backend, NHWC as Keras wants, weights frozen; one model per input size.
* The engine runs its public API: ``model.forward`` / ``model.input_gradient``; per layer, the
  backend's ``conv2d_forward`` / ``conv2d_backward_input`` with preallocated outputs.

Every framework is imported lazily; ``available()`` names those that are missing. Thread counts
are set by the caller (``set_threads``) before anything is timed.
"""

import importlib.util
import os
import tempfile

import numpy as np

from engine.architectures import vgg16_layers

TABLE = vgg16_layers(include_top=False)
CONV_LAYERS = [t for t in TABLE if t["kind"] == "conv2d"]
NAMES = {"engine": "convscope", "pytorch": "PyTorch", "onnxruntime": "ONNX Runtime", "keras": "Keras 3"}


def available() -> dict:
    """{contender: None if usable, else the reason it is skipped}."""
    reasons = {"engine": None}
    has = lambda name: importlib.util.find_spec(name) is not None  # noqa: E731
    reasons["pytorch"] = None if has("torch") else "torch is not installed"
    if not has("torch"):
        reasons["onnxruntime"] = "torch is not installed (needed to export the model)"
    elif not (has("onnxruntime") and has("onnx")):
        reasons["onnxruntime"] = "onnxruntime/onnx are not installed (pip install onnxruntime onnx)"
    else:
        reasons["onnxruntime"] = None
    reasons["keras"] = None if (has("keras") and has("torch")) else "keras or torch is not installed"
    return reasons


def set_threads(n: int) -> dict:
    """Give every framework n threads; return what each reports afterwards."""
    import numba

    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    info = {"engine_numba": numba.get_num_threads(), "openblas": openblas_threads()}
    if importlib.util.find_spec("torch"):
        import torch

        torch.set_num_threads(n)
        info["torch_intra_op"] = torch.get_num_threads()
        info["torch_inter_op"] = torch.get_num_interop_threads()
    info["onnxruntime_intra_op"] = n
    return info


def openblas_threads():
    """NumPy's OpenBLAS thread count (via threadpoolctl when installed, else the environment)."""
    try:
        import threadpoolctl

        pools = [p for p in threadpoolctl.threadpool_info() if p.get("internal_api") == "openblas"]
        if pools:
            return pools[0]["num_threads"]
    except ImportError:
        pass
    return os.environ.get("OPENBLAS_NUM_THREADS", "default (all cores)")


def conv_flops(size: int, batch: int) -> int:
    """Multiply-adds x 2 of the 13 convolutions of VGG16 at size x size (forward or backward)."""
    total, h = 0, size
    for t in TABLE:
        if t["kind"] == "conv2d":
            kh, kw, ci, co = t["kernel_shape"]
            total += 2 * batch * h * h * kh * kw * ci * co
        elif t["kind"] == "maxpool2d":
            h //= 2
    return total


def layer_inputs(size: int) -> list:
    """(name, input H, c_in, c_out) of each conv layer for a size x size image."""
    rows, h = [], size
    for t in TABLE:
        if t["kind"] == "conv2d":
            rows.append((t["name"], h, t["kernel_shape"][2], t["kernel_shape"][3]))
        elif t["kind"] == "maxpool2d":
            h //= 2
    return rows


# ------------------------------------------------------------------------------------- engine


class EngineContender:
    name = "engine"

    def __init__(self, weights):
        import engine

        self.model = engine.load(weights, device="cpu")
        self._layers = {l.name: l for l in self.model.layers}

    def prepare(self, task):
        kind, model = task[0], self.model
        if kind == "forward":
            x = task[1]
            return lambda: model.forward(x, outputs=["block5_pool"])["block5_pool"]
        if kind == "forward_grad":
            x, g = task[1], task[2]
            return lambda: model.input_gradient(x, "block5_pool", g)
        i, data = task[1], task[2]
        ops = model.backend.ops
        spec = model.spec.layer(CONV_LAYERS[i]["name"])
        kernel, bias = model.backend.frozen(spec.kernel), model.backend.asarray(spec.bias)  # as Model holds them
        n, h, w, _ = data.shape
        if kind == "conv":
            out = np.empty((n, h, w, kernel.shape[3]), np.float32)
            return lambda: ops.conv2d_forward(data, kernel, bias, (1, 1), True, out)
        out = np.empty((n, h, w, kernel.shape[2]), np.float32)
        return lambda: ops.conv2d_backward_input(data, kernel, (1, 1), out)

    def all_outputs(self, x) -> dict:
        """Every layer's output, for following the engine's ReLU/pool decisions in PyTorch."""
        return self.model.forward(x, outputs=[t["name"] for t in TABLE])


# ------------------------------------------------------------------------------------ PyTorch


def torch_sequential(weights):
    """The conv stack as a plain NCHW ``torch.nn.Sequential`` with the file's weights, frozen."""
    import torch

    from tests.reference_models import TorchVGG16

    ref = TorchVGG16(weights, include_top=False)
    modules = []
    for t in TABLE:
        if t["kind"] == "conv2d":
            modules += [ref.layers[t["name"]], torch.nn.ReLU()]
        elif t["kind"] == "maxpool2d":
            modules.append(torch.nn.MaxPool2d(t["pool_size"]))
    seq = torch.nn.Sequential(*modules).eval()
    seq.requires_grad_(False)
    return seq, ref


def nchw(x):
    return np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2))


def nhwc(x):
    return np.asarray(x).transpose(0, 2, 3, 1)


class TorchContender:
    name = "pytorch"

    def __init__(self, weights):
        import torch

        self.torch = torch
        self.seq, self.reference = torch_sequential(weights)
        self.convs = [m for m in self.seq if isinstance(m, torch.nn.Conv2d)]

    def all_outputs(self, x) -> dict:
        """Every layer's float32 output: the ReLU/pool decisions this contender makes.

        Taken from the timed module in the timed mode (autograd on, as in ``forward_grad``):
        oneDNN picks its convolution algorithm per call, and the reference module's float32
        outputs round differently (2e-6), enough to flip near-ties and leave its gradient 5.7e-3
        away from the float64 one that follows them, against 5.7e-7 with the timed module's own.
        """
        torch, acts = self.torch, []
        hooks = [m.register_forward_hook(lambda m, i, o: acts.append(nhwc(o.detach().numpy())))
                 for m in self.seq]
        try:
            self.seq(torch.from_numpy(nchw(x)).requires_grad_(True))
        finally:
            for h in hooks:
                h.remove()
        out, k = {}, 0
        for t in TABLE:  # a conv is followed by its ReLU module: its output is the ReLU's
            k += 2 if t["kind"] == "conv2d" else 1
            out[t["name"]] = acts[k - 1]
        return out

    def prepare(self, task):
        torch, kind = self.torch, task[0]
        if kind == "forward":
            x = torch.from_numpy(nchw(task[1]))

            def run():
                with torch.no_grad():
                    return nhwc(self.seq(x).numpy())

            return run
        if kind == "forward_grad":
            x, g = torch.from_numpy(nchw(task[1])), torch.from_numpy(nchw(task[2]))

            def run():
                xt = x.detach().requires_grad_(True)
                self.seq(xt).backward(g)
                return nhwc(xt.grad.numpy())

            return run
        conv = self.convs[task[1]]
        data = torch.from_numpy(nchw(task[2]))
        if kind == "conv":

            def run():
                with torch.no_grad():
                    return nhwc(torch.relu(conv(data)).numpy())

            return run
        n, _, h, w = data.shape
        shape_in = torch.empty((n, conv.in_channels, h, w))  # only its shape is read

        def run():
            with torch.no_grad():
                grad_in = torch.ops.aten.convolution_backward(
                    data, shape_in, conv.weight, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
                    [True, False, False],
                )[0]
                return nhwc(grad_in.numpy())

        return run


# ------------------------------------------------------------------------------- ONNX Runtime


def export_onnx(module, example, path, dynamic=True):
    """torch.onnx.export with the TorchScript exporter (no onnxscript needed), NCHW input 'x'."""
    import torch

    axes = {"x": {0: "n", 2: "h", 3: "w"}, "y": {0: "n", 2: "ho", 3: "wo"}} if dynamic else None
    kwargs = dict(input_names=["x"], output_names=["y"], dynamic_axes=axes, opset_version=17)
    try:
        torch.onnx.export(module, (example,), str(path), dynamo=False, **kwargs)
    except TypeError:  # torch versions without the dynamo switch
        torch.onnx.export(module, (example,), str(path), **kwargs)


class OnnxContender:
    name = "onnxruntime"

    def __init__(self, weights, threads, torch_contender=None):
        import onnxruntime as ort
        import torch

        self.ort, self.torch = ort, torch
        self.threads = threads
        self.tmp = tempfile.TemporaryDirectory(prefix="convscope-onnx-")
        seq = torch_contender.seq if torch_contender else torch_sequential(weights)[0]
        self.convs = [m for m in seq if isinstance(m, torch.nn.Conv2d)]
        path = os.path.join(self.tmp.name, "vgg16_conv.onnx")
        export_onnx(seq, torch.zeros(1, 3, 32, 32), path)
        self.session = self._session(path)
        self._layer_sessions = {}

    def _session(self, path):
        ort = self.ort
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        # ORT's workers spin after each run by default, stealing the cores from whichever
        # contender runs next in the interleaved loop; the others wait passively too.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def prepare(self, task):
        kind = task[0]
        if kind == "forward":
            x = nchw(task[1])
            return lambda: nhwc(self.session.run(None, {"x": x})[0])
        if kind == "conv":
            i, data = task[1], nchw(task[2])
            if i not in self._layer_sessions:
                module = self.torch.nn.Sequential(self.convs[i], self.torch.nn.ReLU())
                path = os.path.join(self.tmp.name, f"conv{i}.onnx")
                export_onnx(module, self.torch.from_numpy(data), path, dynamic=False)
                self._layer_sessions[i] = self._session(path)
            session = self._layer_sessions[i]
            return lambda: nhwc(session.run(None, {"x": data})[0])
        return None  # forward only


# ------------------------------------------------------------------------------------ Keras 3


class KerasContender:
    name = "keras"

    def __init__(self, weights):
        os.environ.setdefault("KERAS_BACKEND", "torch")
        import torch

        self.torch = torch
        self.weights = weights
        self._models = {}

    def model(self, size):
        if size not in self._models:
            from tests.reference_models import KerasVGG16

            model = KerasVGG16(self.weights, (size, size, 3), include_top=False).model
            model.trainable = False
            for v in model.weights:  # torch autograd must not track the weights either
                v.value.requires_grad_(False)
            self._models[size] = model
        return self._models[size]

    def prepare(self, task):
        torch, kind = self.torch, task[0]
        if kind not in ("forward", "forward_grad"):
            return None
        x = torch.from_numpy(np.ascontiguousarray(task[1]))
        model = self.model(x.shape[1])
        if kind == "forward":

            def run():
                with torch.no_grad():
                    return model(x, training=False).detach().numpy()

            return run
        g = torch.from_numpy(np.ascontiguousarray(task[2]))

        def run():
            xt = x.detach().requires_grad_(True)
            model(xt, training=False).backward(g)
            return xt.grad.numpy()

        return run


def make(name, weights, threads, torch_contender=None):
    if name == "engine":
        return EngineContender(weights)
    if name == "pytorch":
        return TorchContender(weights)
    if name == "onnxruntime":
        return OnnxContender(weights, threads, torch_contender)
    if name == "keras":
        return KerasContender(weights)
    raise ValueError(name)
