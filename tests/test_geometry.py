"""The layer table and the network geometry computed from it (``engine.layers``, ``engine.geometry``).

Output sizes follow Keras' rules for every window; DeepDream's tile grid matches its definition on
VGG16: the halo is the smallest multiple of the total stride that covers the deepest field's
reach on both sides (the numbers are those of the per-kind computation it replaced).
"""

import numpy as np
import pytest

from engine import geometry
from engine.architectures import vgg16_layers
from engine.errors import ConvscopeError
from engine.layers import LAYERS
from engine.spec import LayerSpec, NetworkSpec


def vgg16_specs():
    layers = []
    for row in vgg16_layers(include_top=True):
        shape = row.pop("kernel_shape", None)
        weights = {} if shape is None else dict(kernel=np.zeros(shape, np.float32), bias=np.zeros(shape[-1], np.float32))
        layers.append(LayerSpec(**row, **weights))
    return layers


@pytest.mark.parametrize("k, padding", [(3, "same"), (4, "same"), (3, "valid"), (2, "valid")])
@pytest.mark.parametrize("h, w", [(9, 8), (4, 5), (1, 3)])
def test_windows_give_keras_output_sizes(k, padding, h, w):
    conv = LayerSpec("c", "conv2d", kernel=np.zeros((k, k, 2, 3), np.float32), padding=padding)
    expected = (h, w) if padding == "same" else (h - k + 1, w - k + 1)
    assert LAYERS["conv2d"].output_shape(conv, (h, w, 2)) == expected + (3,)
    pool = LayerSpec("p", "maxpool2d", pool_size=(2, 3))
    assert LAYERS["maxpool2d"].output_shape(pool, (h, w, 2)) == (h // 2, w // 3, 2)
    assert LAYERS["dropout"].output_shape(LayerSpec("d", "dropout"), (h, w, 2)) == (h, w, 2)


def test_vgg16_tile_grid_halo_covers_the_field():
    layers = vgg16_specs()
    names = [spec.name for spec in layers]
    fields = geometry.receptive_fields(layers)
    expected = {"block1_conv1": (1, 1), "block1_pool": (4, 2), "block3_conv1": (16, 4),
                "block4_conv3": (56, 8), "block5_conv3": (112, 16), "block5_pool": (128, 32)}
    for name, (halo, align) in expected.items():
        jumps, got_halo, got_align = geometry.tile_grid(layers[: names.index(name) + 1])
        field = fields[name]
        assert (got_halo, got_align) == (halo, align)
        assert jumps == {n: f.jump[0] for n, f in fields.items() if names.index(n) <= names.index(name)}
        reach = max(-field.offset[0], field.offset[0] + field.size[0] - field.jump[0])
        assert got_halo >= reach and got_halo % align == 0 and got_halo - align < -field.offset[0] + align - 1


def test_tile_grid_refuses_layers_that_move_the_grid():
    layers = vgg16_specs()
    with pytest.raises(ConvscopeError, match="layer flatten"):
        geometry.tile_grid(layers)
    valid = LayerSpec("v", "conv2d", kernel=np.zeros((3, 3, 3, 4), np.float32), padding="valid")
    with pytest.raises(ConvscopeError, match="'same' convolutions"):
        geometry.tile_grid([valid])


def test_vgg16_shapes_and_minimum_size():
    layers = vgg16_specs()
    spec = NetworkSpec(layers, (224, 224, 3))
    shapes = geometry.output_shapes(spec, (224, 224))
    assert shapes[layers.index(spec.layer("block5_pool"))] == (7, 7, 512)
    assert shapes[-1] == (1000,)
    assert list(geometry.layer_shapes(layers, (224, 224, 3)).values()) == shapes
    assert geometry.min_input_size(layers) == 32
    with pytest.raises(ConvscopeError, match="expects 25088: use 224x224 px input"):
        geometry.output_shapes(spec, (64, 64))
    with pytest.raises(ConvscopeError, match="use at least 32x32 px"):
        geometry.output_shapes(spec, (31, 40))
