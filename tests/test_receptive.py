"""Receptive-field geometry against brute force.

Three independent checks of the recursion in ``engine.viz.receptive``:

- set propagation: walk one output unit back through the layers, pixel set by pixel set, with no
  formula (the oracle), on random small architectures;
- the engine itself: changing every input pixel outside a unit's field leaves the unit's value
  unchanged, and the input gradient of the unit is zero outside its field (synthetic VGG16 at
  64 px, every spatial layer, a centre and a corner unit). Exact zeros are a property of the
  im2col+GEMM convolution, so these run with ``conv="gemm"``; Winograd's tile transforms leave
  rounding residue outside the field (measured up to 1.5e-6 of the gradient's largest value), which
  ``test_winograd_gradient_outside_the_field_is_rounding`` bounds;
- tightness: on a small network whose activations are all positive (so every ReLU passes the
  gradient) the union of the gradient supports over a seeded batch fills the whole field, and on
  VGG16's first layers the support's bounding box is the clamped field.
"""

import numpy as np
import pytest

import engine
from engine.errors import ConvscopeError
from engine.layers import conv_padding
from engine.model import Model
from engine.spec import LayerSpec, NetworkSpec
from engine.viz.receptive import crop_field, receptive_field, receptive_fields

def field_mask(field, i, j, input_hw):
    """A boolean (H, W) mask of the input pixels inside unit (i, j)'s clamped field."""
    top, left, bottom, right = field.clamped_box(i, j, input_hw)
    mask = np.zeros(tuple(int(s) for s in input_hw), dtype=bool)
    mask[top:bottom, left:right] = True
    return mask


VGG16_SIZES = {
    "block1_conv1": 3, "block1_conv2": 5, "block1_pool": 6,
    "block2_conv1": 10, "block2_conv2": 14, "block2_pool": 16,
    "block3_conv1": 24, "block3_conv2": 32, "block3_conv3": 40, "block3_pool": 44,
    "block4_conv1": 60, "block4_conv2": 76, "block4_conv3": 92, "block4_pool": 100,
    "block5_conv1": 132, "block5_conv2": 164, "block5_conv3": 196, "block5_pool": 212,
}


@pytest.fixture(scope="module")
def vgg16(vgg16_notop_file):
    return engine.load(vgg16_notop_file, conv="gemm")


@pytest.fixture(scope="module")
def vgg16_winograd(vgg16_notop_file):
    return engine.load(vgg16_notop_file)  # the CPU default


def conv(name, kh, kw, c_in, c_out, padding="same", rng=None, positive=False):
    rng = rng or np.random.default_rng(0)
    kernel = rng.uniform(-1, 1, (kh, kw, c_in, c_out)).astype(np.float32)
    bias = np.zeros(c_out, np.float32)
    if positive:
        kernel, bias = np.abs(kernel) + 0.1, bias + 0.5
    return LayerSpec(name, "conv2d", "relu", kernel, bias, padding)


def pool(name, k=2):
    return LayerSpec(name, "maxpool2d", pool_size=(k, k))


def propagate(layers, unit):
    """Input pixels (per axis, as sets) that output ``unit`` depends on: the brute-force oracle."""
    rows, cols = {unit[0]}, {unit[1]}
    for spec in reversed(layers):
        if spec.kind == "conv2d":
            (kh, kw), (ph, pw) = spec.kernel.shape[:2], conv_padding(spec)
            rows = {y + d - ph for y in rows for d in range(kh)}
            cols = {x + d - pw for x in cols for d in range(kw)}
        elif spec.kind == "maxpool2d":
            (sh, sw) = spec.pool_size
            rows = {y * sh + d for y in rows for d in range(sh)}
            cols = {x * sw + d for x in cols for d in range(sw)}
    return rows, cols


def test_vgg16_sizes_jumps_and_offsets(vgg16):
    fields = receptive_fields(vgg16)
    assert {name: f.size[0] for name, f in fields.items()} == VGG16_SIZES
    assert all(f.size[0] == f.size[1] for f in fields.values())
    jumps = {name: f.jump[0] for name, f in fields.items()}
    assert jumps["block1_conv2"] == 1 and jumps["block1_pool"] == 2 and jumps["block4_conv1"] == 8
    assert jumps["block5_pool"] == 32
    # the classic 'start' (centre of unit 0): 0.5 after the first pool, 15.5 after the last
    start = {name: f.offset[0] + (f.size[0] - 1) / 2 for name, f in fields.items()}  # unit 0's centre
    assert (start["block1_conv1"], start["block1_pool"], start["block5_pool"]) == (0.0, 0.5, 15.5)
    assert fields["block4_conv1"].box(0, 0) == (-26, -26, 34, 34)  # centre 3.5, side 60


@pytest.mark.parametrize("seed", range(6))
def test_recursion_equals_set_propagation(seed):
    rng = np.random.default_rng(seed)
    layers, c = [], 1
    for n in range(rng.integers(2, 7)):
        if rng.random() < 0.35:
            layers.append(pool(f"p{n}", int(rng.integers(2, 4))))
        else:
            kh, kw = (int(k) for k in rng.integers(1, 6, size=2))
            layers.append(conv(f"c{n}", kh, kw, c, 1, rng.choice(["same", "valid"]), rng))
    fields = receptive_fields(layers)
    for depth, spec in enumerate(layers, start=1):
        field = fields[spec.name]
        for unit in [(0, 0), (3, 1), (2, 5)]:
            rows, cols = propagate(layers[:depth], unit)
            top, left, bottom, right = field.box(*unit)
            assert rows == set(range(top, bottom)) and cols == set(range(left, right)), (spec, unit)


def test_dense_layer_has_no_field(vgg16):
    with pytest.raises(ConvscopeError, match="not spatial"):
        receptive_field(Model(NetworkSpec([pool("p"), LayerSpec("flatten", "flatten")], (8, 8, 1))), "flatten")
    with pytest.raises(ConvscopeError, match="unknown layer"):
        receptive_field(vgg16, "block9_conv1")


@pytest.mark.parametrize(
    "layer",
    ["block1_conv1", "block1_pool", "block2_conv2", "block3_pool", "block4_conv1", "block5_pool"],
)
def test_vgg16_unit_depends_only_on_its_field(vgg16, layer):
    size = 64
    field = receptive_field(vgg16, layer)
    h, w, channels = vgg16.output_shapes((size, size))[vgg16.layer_index(layer)]
    rng = np.random.default_rng(1)
    x = rng.uniform(-100, 100, (1, size, size, 3)).astype(np.float32)
    for i, j in [(h // 2, w // 2), (0, 0)]:
        inside = field_mask(field, i, j, (size, size))
        k = int(np.argmax(vgg16.forward(x, layer)[layer][0, i, j]))  # a channel that is active
        # perturbation: every pixel outside the field changed, the unit's value is not
        changed = np.where(inside[None, :, :, None], x, rng.uniform(-100, 100, x.shape)).astype(np.float32)
        both = vgg16.forward(np.concatenate([x, changed]), layer)[layer][:, i, j, k]
        np.testing.assert_allclose(both[1], both[0], rtol=1e-5, atol=1e-5)
        # gradient of the unit: zero outside the field
        g = np.zeros((1, h, w, channels), np.float32)
        g[0, i, j, k] = 1.0
        dx = vgg16.input_gradient(x, layer, g)[0]
        support = np.abs(dx).sum(axis=-1) > 0
        assert support.any()
        assert not (support & ~inside).any()


@pytest.mark.parametrize("layer", ["block1_conv1", "block1_conv2", "block1_pool", "block2_conv1"])
def test_vgg16_gradient_support_fills_the_field(vgg16, layer):
    size = 32
    field = receptive_field(vgg16, layer)
    h, w, channels = vgg16.output_shapes((size, size))[vgg16.layer_index(layer)]
    x = np.random.default_rng(2).uniform(-100, 100, (8, size, size, 3)).astype(np.float32)
    for i, j in [(h // 2, w // 2), (0, w - 1)]:
        g = np.zeros((8, h, w, channels), np.float32)
        g[:, i, j, :] = 1.0  # every channel of the unit
        support = (np.abs(vgg16.input_gradient(x, layer, g)).sum(axis=(0, 3))) > 0
        rows, cols = np.nonzero(support)
        box = (rows.min(), cols.min(), rows.max() + 1, cols.max() + 1)
        assert box == field.clamped_box(i, j, (size, size))


@pytest.mark.parametrize("layer", ["block1_conv2", "block2_conv2", "block3_conv3", "block4_conv1"])
def test_winograd_gradient_outside_the_field_is_rounding(vgg16, vgg16_winograd, layer):
    size = 64
    field = receptive_field(vgg16, layer)
    h, w, channels = vgg16.output_shapes((size, size))[vgg16.layer_index(layer)]
    x = np.random.default_rng(4).uniform(-100, 100, (1, size, size, 3)).astype(np.float32)
    i, j = h // 2, w // 2
    inside = field_mask(field, i, j, (size, size))
    assert (~inside).any()
    g = np.zeros((1, h, w, channels), np.float32)
    g[0, i, j, int(np.argmax(vgg16.forward(x, layer)[layer][0, i, j]))] = 1.0
    exact = vgg16.input_gradient(x, layer, g)[0]
    fast = vgg16_winograd.input_gradient(x, layer, g)[0]
    scale = np.abs(exact).max()
    assert scale > 0 and not np.abs(exact[~inside]).any()
    assert np.abs(fast - exact).max() <= 1e-4 * scale
    assert np.abs(fast[~inside]).max() <= 1e-5 * scale


def test_small_network_gradient_support_is_the_field():
    """One input per pixel, each a bright spike on faint noise: with positive kernels every max
    pool on the way follows the spike, so the unit's gradient at the spike is non-zero exactly
    when the spike lies in the unit's field."""
    rng = np.random.default_rng(3)
    layers = [
        conv("c1", 3, 3, 1, 2, "same", rng, positive=True),
        pool("p1"),
        conv("c2", 3, 2, 2, 2, "valid", rng, positive=True),
        pool("p2", 3),
        conv("c3", 1, 3, 2, 1, "same", rng, positive=True),
    ]
    model = Model(NetworkSpec(layers, (None, None, 1)), conv="gemm")
    size = 24
    n = size * size
    x = rng.uniform(0, 0.01, (n, size, size, 1)).astype(np.float32)
    x.reshape(n, n)[np.arange(n), np.arange(n)] = 10.0  # image p: a spike at pixel p
    fields = receptive_fields(model)
    for spec in layers:
        h, w, c = model.output_shapes((size, size))[model.layer_index(spec.name)]
        for i, j in [(h // 2, w // 2), (h - 1, 0)]:
            g = np.zeros((n, h, w, c), np.float32)
            g[:, i, j, :] = 1.0
            dx = model.input_gradient(x, spec.name, g).reshape(n, n)
            seen = dx[np.arange(n), np.arange(n)].reshape(size, size) != 0
            np.testing.assert_array_equal(seen, field_mask(fields[spec.name], i, j, (size, size)))


def test_crop_field_clamps_and_pads():
    image = np.arange(10 * 12 * 3, dtype=np.uint8).reshape(10, 12, 3)
    layers = [conv("c1", 5, 5, 3, 1, "same")]
    field = receptive_fields(layers)["c1"]
    tile = crop_field(image, field, 0, 11, fill=(1, 2, 3))
    assert tile.shape == (5, 5, 3)
    np.testing.assert_array_equal(tile[2:, :3], image[0:3, 9:12])
    assert (tile[:2] == [1, 2, 3]).all() and (tile[:, 3:] == [1, 2, 3]).all()
    np.testing.assert_array_equal(crop_field(image, field, 5, 5), image[3:8, 3:8])
