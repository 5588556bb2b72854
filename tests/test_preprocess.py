"""Caffe preprocessing against the Keras formula, and image decoding of every PIL mode we accept."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from engine.errors import ConvscopeError
from engine.images import load_image
from engine.preprocess import deprocess, normalize, preprocess_input, resize, to_uint8


def keras_caffe(x):
    """keras.applications.imagenet_utils._preprocess_numpy_input(mode="caffe"), transcribed."""
    x = np.array(x)
    if not issubclass(x.dtype.type, np.floating):
        x = x.astype("float32", copy=False)
    x = x[..., ::-1]
    mean = [103.939, 116.779, 123.68]
    x = x.copy()
    x[..., 0] -= mean[0]
    x[..., 1] -= mean[1]
    x[..., 2] -= mean[2]
    return x


# ---------------------------------------------------------------------------- preprocessing


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
@pytest.mark.parametrize("batched", [False, True])
def test_preprocess_matches_keras(dtype, batched):
    rng = np.random.default_rng(0)
    shape = (2, 7, 5, 3) if batched else (7, 5, 3)
    x = rng.integers(0, 256, shape).astype(dtype)
    got = preprocess_input(x)
    want = keras_caffe(x)
    if not batched:
        want = want[None]
    assert got.dtype == np.float32 and got.shape == want.shape and got.flags.c_contiguous
    np.testing.assert_array_equal(got, want)


def test_preprocess_float64_rounds_once():
    x = np.random.default_rng(1).uniform(0, 255, (4, 4, 3))
    np.testing.assert_array_equal(preprocess_input(x), keras_caffe(x)[None].astype(np.float32))


def test_preprocess_values_and_channel_order():
    pixel = np.array([[[10, 20, 30]]], dtype=np.uint8)  # R, G, B
    out = preprocess_input(pixel)
    np.testing.assert_allclose(out[0, 0, 0], [30 - 103.939, 20 - 116.779, 10 - 123.68], rtol=1e-6)


def test_preprocess_does_not_modify_input():
    x = np.full((3, 3, 3), 100.0, dtype=np.float32)
    preprocess_input(x)
    assert np.all(x == 100.0)


def test_round_trip_is_exact():
    img = np.random.default_rng(2).integers(0, 256, (9, 11, 3)).astype(np.uint8)
    back = deprocess(preprocess_input(img))
    assert back.dtype == np.uint8 and back.shape == (1, 9, 11, 3)
    np.testing.assert_array_equal(back[0], img)
    np.testing.assert_array_equal(deprocess(preprocess_input(img)[0]), img)  # HWC stays HWC


def test_deprocess_clips():
    x = np.array([[[1000.0, -1000.0, 0.0]]], dtype=np.float32)  # B, G, R
    np.testing.assert_array_equal(deprocess(x)[0, 0], [124, 0, 255])  # R = 0 + 123.68


def test_preprocess_rejects_wrong_shapes():
    with pytest.raises(ValueError):
        preprocess_input(np.zeros((4, 4)))
    with pytest.raises(ValueError):
        preprocess_input(np.zeros((4, 4, 4)))


def test_resize_float_per_channel_matches_pil():
    x = np.random.default_rng(3).normal(0, 100, (10, 12, 2)).astype(np.float32)
    out = resize(x, (5, 4))
    assert out.shape == (4, 5, 2) and out.dtype == np.float32
    for c in range(2):
        want = np.asarray(Image.fromarray(x[:, :, c]).resize((5, 4), Image.Resampling.BILINEAR))
        np.testing.assert_array_equal(out[:, :, c], want)
    assert out.min() < 0  # not clipped to 0..255
    assert resize(x[:, :, 0], (24, 20)).shape == (20, 24)


def test_normalize_and_to_uint8():
    x = np.array([[-2.0, 0.0], [2.0, 6.0]])
    np.testing.assert_allclose(normalize(x), [[0, 0.25], [0.5, 1.0]])
    np.testing.assert_array_equal(normalize(np.ones((2, 2))), 0)
    np.testing.assert_array_equal(to_uint8([[-1.0, 0.5, 1.0, 2.0]]), [[0, 128, 255, 255]])


# ---------------------------------------------------------------------------- image modes


def _save(tmp_path, image, name="img.png", **kw):
    path = tmp_path / name
    image.save(path, **kw)
    return path


def _png16(width, height, color_type, samples):
    """A 16-bit PNG written by hand (PIL cannot write 16-bit RGB)."""
    raw = b"".join(b"\x00" + samples[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def test_rgb(tmp_path):
    rgb = np.random.default_rng(4).integers(0, 256, (40, 50, 3)).astype(np.uint8)
    out = load_image(_save(tmp_path, Image.fromarray(rgb)))
    assert out.dtype == np.uint8 and out.shape == (40, 50, 3)
    np.testing.assert_array_equal(out, rgb)


def test_grayscale_8bit(tmp_path):
    gray = np.random.default_rng(5).integers(0, 256, (40, 40)).astype(np.uint8)
    out = load_image(_save(tmp_path, Image.fromarray(gray)))
    np.testing.assert_array_equal(out, np.repeat(gray[:, :, None], 3, axis=2))


def test_bilevel(tmp_path):
    bits = np.zeros((40, 40), dtype=bool)
    bits[:, 20:] = True
    out = load_image(_save(tmp_path, Image.fromarray(bits)))
    assert out[0, 0].tolist() == [0, 0, 0] and out[0, 39].tolist() == [255, 255, 255]


def test_grayscale_16bit_is_scaled_not_clipped(tmp_path):
    gray = np.zeros((40, 40), dtype=np.uint16)
    gray[0, :4] = [65535, 32768, 257, 300]
    path = _save(tmp_path, Image.fromarray(gray))
    assert Image.open(path).mode.startswith("I")
    out = load_image(path)
    assert out[0, :4, 0].tolist() == [255, 128, 1, 1]
    assert np.all(out[..., 0] == out[..., 2])


def test_16bit_rgb(tmp_path):
    samples = np.zeros((40, 40, 3), dtype=np.uint16)
    samples[0, 0] = [65535, 0x8000, 0x0100]
    path = tmp_path / "rgb16.png"
    path.write_bytes(_png16(40, 40, 2, samples.reshape(40, -1)))
    out = load_image(path)
    assert out[0, 0].tolist() == [255, 128, 1] and out[1, 1].tolist() == [0, 0, 0]


def test_rgba_composited_on_white(tmp_path):
    rgba = np.zeros((40, 40, 4), dtype=np.uint8)
    rgba[..., :3] = [200, 10, 0]
    rgba[0, 0, 3] = 255  # opaque: the colour
    rgba[0, 1, 3] = 0  # transparent: white
    rgba[0, 2, 3] = 128  # half: the blend
    out = load_image(_save(tmp_path, Image.fromarray(rgba)))
    assert out[0, 0].tolist() == [200, 10, 0]
    assert out[0, 1].tolist() == [255, 255, 255]
    a = 128 / 255
    assert out[0, 2].tolist() == [round(c * a + 255 * (1 - a)) for c in (200, 10, 0)]


def test_la_composited_on_white(tmp_path):
    la = Image.new("LA", (40, 40), (50, 0))
    la.putpixel((1, 0), (50, 255))
    out = load_image(_save(tmp_path, la))
    assert out[0, 0].tolist() == [255, 255, 255] and out[0, 1].tolist() == [50, 50, 50]


def test_palette_with_transparency(tmp_path):
    pal = Image.new("P", (40, 40), 0)
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * (3 * 254))
    pal.putpixel((0, 0), 1)
    path = _save(tmp_path, pal, transparency=0)
    out = load_image(path)
    assert out[0, 0].tolist() == [10, 200, 30]
    assert out[5, 5].tolist() == [255, 255, 255]  # index 0 is transparent
    out_gif = load_image(_save(tmp_path, pal, "img.gif", transparency=0))
    assert out_gif[0, 0].tolist() == [10, 200, 30] and out_gif[5, 5].tolist() == [255, 255, 255]


def test_palette_opaque(tmp_path):
    pal = Image.new("P", (40, 40), 1)
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * (3 * 254))
    assert load_image(_save(tmp_path, pal))[3, 3].tolist() == [10, 200, 30]


def test_cmyk(tmp_path):
    cmyk = Image.new("CMYK", (40, 40), (0, 255, 255, 0))  # pure red
    out = load_image(_save(tmp_path, cmyk, "img.tiff"))
    assert out[0, 0].tolist() == [255, 0, 0]


def test_exif_orientation(tmp_path):
    rgb = np.zeros((40, 60, 3), dtype=np.uint8)  # landscape, red left column
    rgb[:, 0] = [255, 0, 0]
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = _save(tmp_path, Image.fromarray(rgb), "img.png", exif=exif)
    out = load_image(path)
    assert out.shape == (60, 40, 3)  # portrait once oriented
    assert out[0, :, 0].min() == 255 and out[1:, :, 0].max() == 0  # left column became top row


def test_resize_bilinear_default_and_keras_nearest(tmp_path):
    rgb = np.random.default_rng(6).integers(0, 256, (64, 80, 3)).astype(np.uint8)
    path = _save(tmp_path, Image.fromarray(rgb))
    out = load_image(path, size=(48, 40))
    assert out.shape == (40, 48, 3)
    want = np.asarray(Image.fromarray(rgb).resize((48, 40), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(out, want)
    # Keras' load_img(target_size=(40, 48)): convert("RGB") then nearest-neighbour resize.
    keras = np.asarray(Image.open(path).convert("RGB").resize((48, 40), Image.Resampling.NEAREST))
    np.testing.assert_array_equal(load_image(path, size=(48, 40), resample="nearest"), keras)


def test_shared_photos(shared_data):
    cat = load_image(shared_data / "images" / "chelsea.png")
    assert cat.shape == (300, 451, 3)
    camera = load_image(shared_data / "images" / "camera.png", size=(224, 224))
    assert camera.shape == (224, 224, 3) and np.all(camera[..., 0] == camera[..., 1])


# ---------------------------------------------------------------------------- refusals (unit level)


def test_small_image_refused(tmp_path):
    path = _save(tmp_path, Image.new("RGB", (31, 100)))
    with pytest.raises(ConvscopeError, match="at least 32x32"):
        load_image(path)


def test_decompression_bomb_warning_is_an_error(tmp_path, monkeypatch):
    path = _save(tmp_path, Image.new("RGB", (40, 40)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1600 pixels: PIL only warns
    with pytest.raises(ConvscopeError, match="decompression-bomb"):
        load_image(path)


def test_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.png"
    data = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(data, "PNG")
    bad.write_bytes(data.getvalue()[:60])
    for path in (tmp_path / "missing.png", tmp_path, bad):
        with pytest.raises(ConvscopeError) as info:
            load_image(path)
        assert "\n" not in str(info.value) and str(path) in str(info.value)
