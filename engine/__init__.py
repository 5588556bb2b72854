"""convscope's engine: Keras CNNs (VGG16 first) forward and backward in Numba, no DL framework.

    import engine
    model = engine.load("vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5")  # device="cpu"
    x = engine.preprocess_input(rgb)                   # float32 NHWC, Keras "caffe" preprocessing
    acts = model.forward(x, outputs=["block3_conv1", "block5_pool"])     # {name: NHWC array}
    dx = model.input_gradient(x, layer="block3_conv1", grad_output=g)    # d sum(g * layer(x)) / dx
"""

from engine._blas import configure_cpu_threads

configure_cpu_threads()  # must run before numpy and numba are first imported

from engine.backend import get_backend  # noqa: E402
from engine.errors import ConvscopeError  # noqa: E402
from engine.model import Model, Trace  # noqa: E402
from engine.preprocess import deprocess, preprocess_input  # noqa: E402


def load(path=None, device="cpu", need_top=False, conv=None) -> Model:
    """Load a network from a Keras h5 file onto 'cpu', 'cuda', 'auto' or 'reference'.

    ``path`` None looks for the official VGG16 file as ``engine.resources.resolve_weights`` does
    (CONVSCOPE_WEIGHTS, then the Keras cache ~/.keras/models/); ``need_top`` asks for the file
    with the classifier. ``conv`` (default ``$CONVSCOPE_CONV``, else "auto"): "auto" lets the CPU
    take its fastest convolution (Winograd for 3x3 layers), "gemm" keeps it to im2col + GEMM (see
    ``engine.model.CONV_ALGORITHMS``).
    """
    from engine.resources import resolve_weights
    from engine.weights import read_network

    path = resolve_weights(path, need_top=need_top)
    return Model(read_network(path), device=device, path=path, conv=conv)


__all__ = [
    "ConvscopeError",
    "Model",
    "Trace",
    "deprocess",
    "get_backend",
    "load",
    "preprocess_input",
]
