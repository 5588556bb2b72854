"""Winograd F(2x2, 3x3) and F(4x4, 3x3) (kernels/cpu/winograd.py) against kernels/reference.py.

Small random shapes: odd and even sizes (ragged edge tiles), pads (1, 1) ('same'), (0, 0)
('valid') and (2, 2) (the input gradient of 'valid'), batches 1-3, channel counts that are not
multiples of 16, ReLU on and off, forward and transposed (input-gradient) kernels, and chunks
smaller than the image. The reference runs in float64; the bar is a relative error < 1e-5 for
F(2x2) and < 2e-5 for F(4x4), whose transforms lose more bits (measured: ~1e-7 and ~1e-6, 2-3e-6 at
Ci = 512). Also: the public ops choose Winograd for read-only 3x3 kernels and still match, and the
kernel transform is cached only for read-only kernels.
"""

import numpy as np
import pytest

import kernels.cpu as cpu
from kernels import reference as ref
from kernels.cpu import conv, winograd
from tests.metrics import rel_err

TOL = {2: 1e-5, 4: 2e-5}


def out_size(h, pad):
    return h + 2 * pad - 2  # symmetric pads here: (1,1) same, (0,0) valid, (2,2) full


def random_layer(rng, n, h, w, ci, co):
    x = rng.standard_normal((n, h, w, ci)).astype(np.float32)
    kernel = (rng.standard_normal((3, 3, ci, co)) / np.sqrt(9 * ci)).astype(np.float32)
    return x, kernel, rng.standard_normal(co).astype(np.float32)


def reference_pass(x, kernel, bias, relu, transposed, shape):
    """The float64 reference of one layer pass with pad (1, 1): its forward ([relu](bias + x (*)
    kernel)), or with ``transposed`` its input gradient for grad_out = x; shaped ``shape``."""
    x64, k64 = x.astype(np.float64), kernel.astype(np.float64)
    if transposed:
        return ref.conv2d_backward_input(x64, k64, (1, 1), np.empty(shape))
    return ref.conv2d_forward(x64, k64, bias.astype(np.float64), (1, 1), relu, np.empty(shape))


# (batch, h, w, c_in, c_out, pad)
CASES = [
    (1, 5, 7, 3, 5, 1),
    (2, 7, 9, 20, 17, 1),
    (3, 6, 5, 17, 33, 0),
    (1, 9, 8, 5, 24, 0),
    (2, 5, 6, 19, 7, 2),
    (1, 3, 3, 2, 3, 2),
    (1, 1, 1, 4, 3, 1),
]


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c)))
def test_forward_matches_reference(case, relu, m):
    n, h, w, ci, co, p = case
    rng = np.random.default_rng(sum(case) + 7 * m)
    x, kernel, bias = random_layer(rng, n, h, w, ci, co)
    out = np.full((n, out_size(h, p), out_size(w, p), co), np.nan, np.float32)
    winograd.conv_winograd(x, kernel, bias, (p, p), relu, out, False, m=m)
    expected = ref.conv2d_forward(
        x.astype(np.float64), kernel.astype(np.float64), bias.astype(np.float64), (p, p), relu,
        np.empty(out.shape),
    )
    assert rel_err(out, expected) < TOL[m]


@pytest.mark.parametrize("u_t", ["copy", "view"])
@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c)))
def test_transposed_kernel_is_the_input_gradient(monkeypatch, case, m, u_t):
    """The flipped kernel through the forward kernel's U (transposed: a contiguous copy, or a
    view as for big kernels) and the reversed data/output transforms."""
    n, h, w, ci, co, p = case
    rng = np.random.default_rng(sum(case) + 11 * m)
    _, kernel, _ = random_layer(rng, n, h, w, ci, co)
    if u_t == "view":
        monkeypatch.setattr(winograd, "TRANSPOSED_COPY_BYTES", 0)
    grad_out = rng.standard_normal((n, out_size(h, p), out_size(w, p), co)).astype(np.float32)
    grad_in = np.full((n, h, w, ci), np.nan, np.float32)
    winograd.conv_winograd(grad_out, kernel, None, (2 - p, 2 - p), False, grad_in, True, m=m)
    expected = ref.conv2d_backward_input(
        grad_out.astype(np.float64), kernel.astype(np.float64), (p, p), np.empty(grad_in.shape)
    )
    assert rel_err(grad_in, expected) < TOL[m]


@pytest.mark.parametrize("m", [2, 4])
def test_chunks_smaller_than_the_image(monkeypatch, m):
    """Tiles split over many chunks (the last one short) give the same result as one chunk."""
    rng = np.random.default_rng(5)
    x, kernel, bias = random_layer(rng, 2, 11, 13, 18, 21)
    whole = np.empty((2, 11, 13, 21), np.float32)
    winograd.conv_winograd(x, kernel, bias, (1, 1), True, whole, False, m=m)
    monkeypatch.setattr(winograd, "WORKSPACE_BYTES", 5 * (m + 2) ** 2 * (18 + 21) * 4)
    chunked = np.full_like(whole, np.nan)
    winograd.conv_winograd(x, kernel, bias, (1, 1), True, chunked, False, m=m)
    np.testing.assert_allclose(chunked, whole, rtol=1e-6, atol=1e-6)


def test_float64_is_exact_to_rounding():
    rng = np.random.default_rng(9)
    x, kernel, bias = (a.astype(np.float64) for a in random_layer(rng, 1, 9, 7, 5, 6))
    for m in (2, 4):
        out = np.empty((1, 9, 7, 6))
        winograd.conv_winograd(x, kernel, bias, (1, 1), False, out, False, m=m)
        expected = ref.conv2d_forward(x, kernel, bias, (1, 1), False, np.empty(out.shape))
        assert rel_err(out, expected) < 1e-13


@pytest.mark.parametrize("ci, co, expected", [(3, 64, "im2col"), (16, 5, "winograd"),
                                               (64, 64, "winograd"), (64, 3, "shifted")])
def test_choose_algorithm(ci, co, expected):
    chosen = conv.choose_algorithm((3, 3, ci, co), (1, 1), (1, 8, 8, ci), (1, 8, 8, co))
    assert chosen is {"im2col": conv.conv_im2col_gemm, "winograd": winograd.conv_winograd,
                      "shifted": conv.shifted.conv_shifted}[expected]
    assert conv.choose_algorithm((3, 3, ci, co), (1, 1), (1, 8, 8, ci), (1, 8, 8, co),
                                 algorithm="gemm") is conv.conv_im2col_gemm
    assert conv.choose_algorithm((5, 5, 64, 64), (2, 2), (1, 8, 8, 64), (1, 8, 8, 64)) \
        is conv.conv_im2col_gemm


def test_writable_kernels_use_winograd_only_on_large_images(monkeypatch):
    """Their transform is rebuilt per call: only worth it when there are many pixels per channel,
    and only when switched on (WINOGRAD_UNCACHED_PIXELS_PER_CHANNEL)."""
    shape = (3, 3, 512, 512)
    small, large = (1, 14, 14, 512), (4, 56, 56, 512)
    assert conv.choose_algorithm(shape, (1, 1), small, small, True) is winograd.conv_winograd
    assert conv.choose_algorithm(shape, (1, 1), large, large, False) is conv.conv_im2col_gemm
    monkeypatch.setattr(conv, "WINOGRAD_UNCACHED_PIXELS_PER_CHANNEL", 2)
    assert conv.choose_algorithm(shape, (1, 1), small, small, False) is conv.conv_im2col_gemm
    assert conv.choose_algorithm(shape, (1, 1), large, large, False) is winograd.conv_winograd
    batch = (64, 14, 14, 512)  # per image, not per batch: a batch must not change the algorithm
    assert conv.choose_algorithm(shape, (1, 1), batch, batch, False) is conv.conv_im2col_gemm


@pytest.mark.parametrize("n, h, ci, co", [(1, 9, 20, 17), (3, 26, 16, 35)])
def test_public_ops_use_winograd_and_match(monkeypatch, n, h, ci, co):
    calls = []
    real = winograd.conv_winograd
    monkeypatch.setattr(conv, "conv_winograd",
                        lambda *a, **k: calls.append(a[6]) or real(*a, **k))
    rng = np.random.default_rng(h)
    x, kernel, bias = random_layer(rng, n, h, h, ci, co)
    kernel.flags.writeable = False  # frozen weights: Winograd (transform cached)
    out = np.full((n, h, h, co), np.nan, np.float32)
    cpu.conv2d_forward(x, kernel, bias, (1, 1), True, out)
    expected = ref.conv2d_forward(x, kernel, bias, (1, 1), True, np.empty(out.shape))
    assert rel_err(out, expected) < 1e-5
    grad_out = rng.standard_normal(out.shape).astype(np.float32)
    grad_in = np.full(x.shape, np.nan, np.float32)
    cpu.conv2d_backward_input(grad_out, kernel, (1, 1), grad_in)
    expected = ref.conv2d_backward_input(grad_out, kernel, (1, 1), np.empty(x.shape))
    assert rel_err(grad_in, expected) < 1e-5
    assert calls == [False, True]  # forward, then the transposed kernel (input gradient)


def test_kernel_transform_cached_only_when_read_only():
    rng = np.random.default_rng(1)
    _, kernel, _ = random_layer(rng, 1, 4, 4, 6, 5)
    winograd.clear_kernel_cache()
    assert winograd.transformed_kernel(kernel, 2, False) is not winograd.transformed_kernel(
        kernel, 2, False
    )  # writable: may change between calls, so transformed every time
    kernel.flags.writeable = False
    u = winograd.transformed_kernel(kernel, 2, False)
    assert winograd.transformed_kernel(kernel, 2, False) is u
    u_t = winograd.transformed_kernel(kernel, 2, True)
    assert u_t is not u and u_t.flags.c_contiguous and np.array_equal(u_t, u.transpose(0, 2, 1))
    assert winograd.transformed_kernel(kernel, 2, True) is u_t  # the small copy is cached too
    assert winograd.transformed_kernel(kernel, 4, False).shape == (36, 6, 5)
    assert winograd.transformed_kernel(kernel, 2, True).shape == (16, 5, 6)
    view = np.ascontiguousarray(rng.standard_normal((3, 3, 6, 5)).astype(np.float32))
    frozen_view = view[:]
    frozen_view.flags.writeable = False  # its base can still be written: not cached
    assert winograd.transformed_kernel(frozen_view, 2, False) is not winograd.transformed_kernel(
        frozen_view, 2, False
    )
    winograd.clear_kernel_cache()


def test_big_kernels_keep_one_transform(monkeypatch):
    """Above TRANSPOSED_COPY_BYTES the input gradient reads U through a transposed view: one
    cached transform per big kernel (VGG16's 512-channel layers: ~140 MB less at 224 px)."""
    rng = np.random.default_rng(3)
    _, kernel, _ = random_layer(rng, 1, 4, 4, 6, 5)
    kernel.flags.writeable = False
    monkeypatch.setattr(winograd, "TRANSPOSED_COPY_BYTES", 0)
    winograd.clear_kernel_cache()
    u = winograd.transformed_kernel(kernel, 4)
    u_t = winograd.transformed_kernel(kernel, 4, True)
    assert np.shares_memory(u, u_t) and u_t.shape == (36, 5, 6)
    assert len(winograd._kernel_cache) == 1
    winograd.clear_kernel_cache()


@pytest.mark.parametrize("transposed", [False, True])
def test_big_transforms_of_many_tile_calls_are_rebuilt_not_kept(monkeypatch, transposed):
    """A transform of at least UNCACHED_MIN_BYTES in a call of at least UNCACHED_MIN_TILES tiles is
    built per call (into a reused buffer) and not cached; one already cached is used. Same bits."""
    rng = np.random.default_rng(6)
    x, kernel, bias = random_layer(rng, 2, 9, 10, 7, 6)
    kernel.flags.writeable = False
    if transposed:
        x = rng.standard_normal((2, 9, 10, 6)).astype(np.float32)
        bias = None
    out_shape = (2, 9, 10, 7 if transposed else 6)
    winograd.clear_kernel_cache()
    cached = np.full(out_shape, np.nan, np.float32)
    winograd.conv_winograd(x, kernel, bias, (1, 1), not transposed, cached, transposed, m=4)
    assert len(winograd._kernel_cache) >= 1
    winograd.clear_kernel_cache()
    monkeypatch.setattr(winograd, "UNCACHED_MIN_BYTES", 36 * 7 * 6 * 4)
    monkeypatch.setattr(winograd, "UNCACHED_MIN_TILES", 2 * 3 * 3)  # this call's tiles (m = 4)
    for _ in range(2):  # the second call reuses the thread's buffer
        rebuilt = np.full(out_shape, np.nan, np.float32)
        winograd.conv_winograd(x, kernel, bias, (1, 1), not transposed, rebuilt, transposed, m=4)
        assert len(winograd._kernel_cache) == 0
        np.testing.assert_array_equal(rebuilt, cached)
    monkeypatch.setattr(winograd, "UNCACHED_MIN_TILES", 2 * 3 * 3 + 1)  # now kept ...
    winograd.transformed_kernel(kernel, 4, tiles=0)
    assert len(winograd._kernel_cache) == 1
    monkeypatch.setattr(winograd, "UNCACHED_MIN_TILES", 1)  # ... and used by a many-tile call
    assert winograd.transformed_kernel(kernel, 4, tiles=10) is winograd.transformed_kernel(kernel, 4)
    winograd.clear_kernel_cache()


def test_read_only_kernels_and_inputs_are_accepted():
    rng = np.random.default_rng(2)
    x, kernel, bias = random_layer(rng, 1, 6, 6, 17, 6)
    x.flags.writeable = kernel.flags.writeable = False
    out = np.empty((1, 6, 6, 6), np.float32)
    assert conv.choose_algorithm(kernel.shape, (1, 1), x.shape, out.shape, True) \
        is winograd.conv_winograd
    cpu.conv2d_forward(x, kernel, bias, (1, 1), False, out)
    expected = ref.conv2d_forward(x, kernel, bias, (1, 1), False, np.empty(out.shape))
    assert rel_err(out, expected) < 1e-5


@pytest.mark.parametrize("direction", ["forward", "transposed", "transposed-view"])
@pytest.mark.parametrize("shape", [(1, 30, 30, 24, 40), (2, 6, 6, 128, 128)], ids=["many-tiles", "deep"])
def test_result_does_not_depend_on_the_number_of_workers(monkeypatch, shape, direction):
    """Chunks of tiles, or for a deep layer (one chunk) runs of its a^2 GEMMs, on 1, 2 or 3
    workers (the GEMMs: all in one call, 8 + 8, 6 + 6 + 4): the chunks depend on the shapes only
    and every GEMM is the same call, so the same bits (and the reference's values). The input
    gradient through U^T as a view takes the swapped GEMMs (output channels first)."""
    from kernels.cpu import _threads

    n, h, w, ci, co = shape
    transposed = direction != "forward"
    rng = np.random.default_rng(11)
    x, kernel, bias = random_layer(rng, n, h, w, ci, co)
    kernel.flags.writeable = False
    monkeypatch.setattr(winograd, "WORKSPACE_BYTES", 64 << 10)  # several chunks at these sizes
    if direction == "transposed-view":
        monkeypatch.setattr(winograd, "TRANSPOSED_COPY_BYTES", 0)
    winograd.clear_kernel_cache()
    if transposed:  # the input gradient: grad_out has co channels, the result ci
        x = rng.standard_normal((n, h, w, co)).astype(np.float32)
    results = []
    for count in (1, 2, 3):
        monkeypatch.setattr(_threads, "workers", lambda count=count: count)
        out = np.full((n, h, w, ci if transposed else co), np.nan, np.float32)
        if transposed:
            winograd.conv_winograd(x, kernel, None, (1, 1), False, out, True)
        else:
            winograd.conv_winograd(x, kernel, bias, (1, 1), True, out)
        results.append(out)
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_array_equal(results[0], results[2])
    assert rel_err(results[0], reference_pass(x, kernel, bias, True, transposed, results[0].shape)) < TOL[4]
    winograd.clear_kernel_cache()


@pytest.mark.parametrize("m", [2, 4])
def test_gather_tiles_is_bt_d_b_per_tile(m):
    """V[k, l, t, c] = (B^T d_t B)[k, l] for every tile, against NumPy on zero-padded tiles,
    starting mid-image (t0) and crossing into the next image."""
    a = m + 2
    rng = np.random.default_rng(21 + m)
    x = rng.standard_normal((2, 7, 9, 5))
    bt = winograd._BT[m]
    tiles_h, tiles_w, top, left, t0, tc = -(-7 // m), -(-9 // m), 1, 1, 3, 2 * -(-7 // m) * -(-9 // m) - 3
    v = np.full(a * a * tc * 5, np.nan)
    winograd.gather_tiles(x, bt, m, top, left, tiles_h, tiles_w, t0, v, 0, tc)
    padded = np.zeros((2, tiles_h * m + a, tiles_w * m + a, 5))
    padded[:, top : top + 7, left : left + 9] = x
    expected = np.empty((a, a, tc, 5))
    for t in range(tc):
        n, rem = divmod(t0 + t, tiles_h * tiles_w)
        ty, tx = divmod(rem, tiles_w)
        d = padded[n, ty * m : ty * m + a, tx * m : tx * m + a]  # (a, a, c)
        expected[:, :, t] = np.einsum("ki,ijc,lj->klc", bt, d, bt)
    np.testing.assert_allclose(v.reshape(a, a, tc, 5), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("relu", [False, True])
def test_scatter_transposed_writes_channels_first_tiles(relu):
    """The swapped layout's scatter: out = [relu](Y[i, j, c, t] + bias) per tile, Y (m, m, co, tc)
    with more tiles than one block (and a short last block), ragged edges dropped, in two channel
    ranges (as two workers write it)."""
    m, co = 4, 3
    rng = np.random.default_rng(4)
    out_shape = (2, 9, 10, co)
    tiles_h, tiles_w, t0 = -(-9 // m), -(-10 // m), 0
    tc = 2 * tiles_h * tiles_w  # 18 tiles: a block of 16 and one of 2
    y = rng.standard_normal((m, m, co, tc))
    bias = rng.standard_normal(co)
    out = np.full(out_shape, np.nan)
    winograd.scatter_tiles_transposed(y.reshape(-1), bias, relu, m, tiles_h, tiles_w, t0, out, 0, 2)
    winograd.scatter_tiles_transposed(y.reshape(-1), bias, relu, m, tiles_h, tiles_w, t0, out, 2, co)
    expected = np.full((2, tiles_h * m, tiles_w * m, co), np.nan)
    for t in range(tc):
        n, rem = divmod(t, tiles_h * tiles_w)
        ty, tx = divmod(rem, tiles_w)
        expected[n, ty * m : ty * m + m, tx * m : tx * m + m] = y[:, :, :, t] + bias
    expected = expected[:, :9, :10]
    if relu:
        expected = np.maximum(expected, 0)
    np.testing.assert_array_equal(out, expected)



@pytest.mark.parametrize("transposed", [False, True])
def test_a_deep_layer_groups_whole_images_within_max_group_bytes(monkeypatch, transposed):
    """A deep layer (big U, few tiles) takes whole images per chunk, as one chunk unless its V + M
    would pass MAX_GROUP_BYTES: then as groups of images within it, to the same bits (each image
    has its own GEMMs either way)."""
    from kernels.cpu import _threads

    rng = np.random.default_rng(12)
    x, kernel, bias = random_layer(rng, 4, 6, 6, 128, 128)  # F(2x2): 9 tiles of 16 KiB per image
    kernel.flags.writeable = False
    bias = None if transposed else bias  # the input gradient has none
    winograd.clear_kernel_cache()
    asked = []
    scratch = _threads.scratch

    def recording(name, size, dtype):
        if name in ("wino_vs", "wino_m"):
            asked.append(size * np.dtype(dtype).itemsize)
        return scratch(name, size, dtype)

    monkeypatch.setattr(_threads, "scratch", recording)
    whole = np.empty((4, 6, 6, 128), np.float32)
    winograd.conv_winograd(x, kernel, bias, (1, 1), False, whole, transposed)
    assert len(asked) == 2 and sum(asked) == 4 * 9 * 16 * 256 * 4  # one chunk: V and M of 36 tiles
    asked.clear()
    monkeypatch.setattr(winograd, "MAX_GROUP_BYTES", 300 << 10)
    grouped = np.full_like(whole, np.nan)
    winograd.conv_winograd(x, kernel, bias, (1, 1), False, grouped, transposed)
    assert len(asked) == 2 * 2 and max(asked) <= 150 << 10  # two chunks of two images
    np.testing.assert_array_equal(grouped, whole)
    assert rel_err(grouped, reference_pass(x, kernel, bias, False, transposed, whole.shape)) < TOL[2]
    winograd.clear_kernel_cache()


@pytest.mark.parametrize("transposed, layout", [(False, "tiles first"), (True, "tiles first"), (True, "channels first")])
def test_one_chunk_layer_shares_its_passes_between_workers_to_the_same_bits(monkeypatch, transposed, layout):
    """A layer that is one chunk (a deep layer at batch 1) hands its gather and its output passes
    to the workers in ranges of tiles (channels, for the swapped GEMMs' layout) from
    SHARED_PASSES_MIN_BYTES on: the same bits as one thread doing them, and the convolution."""
    from kernels.cpu import _threads

    if _threads.workers() < 2:
        pytest.skip("needs two workers")
    rng = np.random.default_rng(31)
    x, kernel, bias = random_layer(rng, 1, 12, 12, 96, 80)  # F(2x2): 36 tiles, one chunk
    kernel.flags.writeable = False
    bias = None if transposed else bias
    if layout == "channels first":  # U^T as a view: the GEMMs are taken swapped
        monkeypatch.setattr(winograd, "TRANSPOSED_COPY_BYTES", 0)
    ranges = []
    gather = winograd.gather_tiles

    def recording(*args):
        ranges.append(args[-2:])
        return gather(*args)

    monkeypatch.setattr(winograd, "gather_tiles", recording)
    source = rng.standard_normal((1, 12, 12, 80)).astype(np.float32) if transposed else x
    outs = []
    for threshold in (1 << 40, 0):  # never shared, always shared
        winograd.clear_kernel_cache()
        monkeypatch.setattr(winograd, "SHARED_PASSES_MIN_BYTES", threshold)
        shape = (1, 12, 12, 96 if transposed else 80)
        out = np.full(shape, np.nan, np.float32)
        winograd.conv_winograd(source, kernel, bias, (1, 1), False, out, transposed)
        outs.append(out)
    assert ranges[0] == (0, 36) and len(ranges) > 2 and ranges[1][0] == 0 and ranges[-1][1] == 36
    np.testing.assert_array_equal(outs[1], outs[0])
    assert rel_err(outs[1], reference_pass(source, kernel, bias, False, transposed, outs[0].shape)) < TOL[4]
    winograd.clear_kernel_cache()
