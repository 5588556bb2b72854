"""A network as plain data: what every weight-file loader produces and what ``Model`` consumes.

A ``NetworkSpec`` is an ordered list of ``LayerSpec``; arrays are already converted to the engine's
conventions (see ``kernels/__init__.py``): conv kernels (kh, kw, c_in, c_out) as cross-correlation,
dense kernels (n_in, n_out) expecting a flatten in (h, w, c) order, float32, C-contiguous.
No compute lives here.
"""

from dataclasses import dataclass, field

import numpy as np


@dataclass
class LayerSpec:
    name: str
    kind: str  # a key of engine.layers.LAYERS: conv2d, maxpool2d, flatten, dense, dropout
    activation: str = "linear"  # a key of engine.layers.ACTIVATIONS (conv2d and dense only)
    kernel: np.ndarray | None = None
    bias: np.ndarray | None = None  # always present for conv2d/dense (zeros when use_bias=False)
    padding: str = "valid"  # conv2d: "same" or "valid"
    pool_size: tuple[int, int] = (2, 2)  # maxpool2d: window = stride, 'valid'

    @property
    def n_params(self) -> int:
        return sum(a.size for a in (self.kernel, self.bias) if a is not None)


@dataclass
class NetworkSpec:
    layers: list[LayerSpec]
    input_shape: tuple  # (H, W, C); H and W may be None when the network takes any size
    source: str = ""  # a short description of the file layout it came from
    metadata: dict = field(default_factory=dict)

    def layer(self, name: str) -> LayerSpec:
        for spec in self.layers:
            if spec.name == name:
                return spec
        raise KeyError(name)
