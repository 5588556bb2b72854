"""Every bad input gets exactly one ``error: ...`` line on stderr, a non-zero exit, no traceback,
and leaves no file behind (commands run with the temporary folder as working directory)."""

import io
import struct
import zlib

import pytest
from PIL import Image
from typer.testing import CliRunner

import cli


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.delenv("CONVSCOPE_WEIGHTS", raising=False)
    monkeypatch.delenv("CONVSCOPE_CLASS_INDEX", raising=False)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


def fails_cleanly(*args, code=1, contains=None):
    """Run the CLI; check the failure is one clean line; return that line."""
    before = _tree()
    result = CliRunner().invoke(cli.app, [str(a) for a in args])
    # Only SystemExit may end a command: anything else would be a traceback for the user.
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == code, (result.exit_code, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    assert result.stdout == ""
    assert _tree() == before, "a file was left behind"
    if contains is not None:
        assert contains in lines[0], lines[0]
    return lines[0]


def _tree():
    import os

    return sorted(os.path.join(d, f) for d, _, files in os.walk(".") for f in files)


def _png_bytes(size=(64, 64), mode="RGB"):
    data = io.BytesIO()
    Image.new(mode, size, 128).save(data, "PNG")
    return data.getvalue()


def _chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


# ---------------------------------------------------------------------------- images


def _bad_images(tmp):
    (tmp / "empty.png").write_bytes(b"")
    (tmp / "text.jpg").write_text("this is not a picture\n")
    (tmp / "truncated.png").write_bytes(_png_bytes()[:70])
    jpeg = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(jpeg, "JPEG")
    (tmp / "truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    corrupt = bytearray(_png_bytes())
    corrupt[40:60] = b"\xff" * 20  # inside the IDAT stream: bad CRC / zlib data
    (tmp / "corrupt.png").write_bytes(bytes(corrupt))
    # A 20000 x 20000 PNG header (400 Mpx, beyond twice PIL's limit) with almost no data.
    header = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    (tmp / "bomb.png").write_bytes(
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b"\0" * 64))
    )
    (tmp / "tiny.png").write_bytes(_png_bytes((16, 40)))
    (tmp / "folder.png").mkdir()
    return tmp


@pytest.mark.parametrize(
    "name, message",
    [
        ("missing.png", "no such file"),
        ("folder.png", "is a directory"),
        ("empty.png", "empty"),
        ("text.jpg", "not an image file"),
        ("truncated.png", "corrupt or truncated"),
        ("truncated.jpg", "corrupt or truncated"),
        ("corrupt.png", "corrupt or truncated"),
        ("bomb.png", "decompression-bomb"),
        ("tiny.png", "needs at least 32x32"),
    ],
)
def test_bad_image(tmp_path, vgg16_notop_file, name, message):
    images = tmp_path / "images"
    images.mkdir()
    _bad_images(images)
    line = fails_cleanly("predict", images / name, "--weights", vgg16_notop_file, contains=message)
    assert name in line


def test_image_just_over_the_pixel_limit(tmp_path, vgg16_notop_file, monkeypatch):
    """PIL only warns between MAX_IMAGE_PIXELS and twice that; we refuse there too."""
    path = tmp_path / "big.png"
    path.write_bytes(_png_bytes((64, 64)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)  # 4096 pixels: PIL's warning range
    fails_cleanly("predict", path, "--weights", vgg16_notop_file, contains="decompression-bomb")


# ---------------------------------------------------------------------------- weights


def test_weights_missing(tmp_path):
    fails_cleanly("info", "--weights", tmp_path / "nope.h5", contains="nope.h5")


def test_weights_directory(tmp_path):
    fails_cleanly("info", "--weights", tmp_path, contains="not a file")


def test_weights_empty(tmp_path):
    (tmp_path / "empty.h5").write_bytes(b"")
    fails_cleanly("info", "--weights", tmp_path / "empty.h5", contains="empty")


def test_weights_not_hdf5(tmp_path):
    (tmp_path / "page.h5").write_text("<html>404 Not Found</html>")
    fails_cleanly("info", "--weights", tmp_path / "page.h5", contains="not an HDF5 file")


def test_weights_truncated(tmp_path, vgg16_notop_file):
    data = vgg16_notop_file.read_bytes()
    (tmp_path / "cut.h5").write_bytes(data[: len(data) // 3])
    fails_cleanly("info", "--weights", tmp_path / "cut.h5", contains="cut.h5")


def test_no_weights_anywhere_without_a_terminal():
    fails_cleanly("info", contains="VGG16 weights not found")


def test_predict_with_notop_file(vgg16_notop_file, shared_data):
    fails_cleanly(
        "predict", shared_data / "images" / "chelsea.png", "--weights", vgg16_notop_file,
        contains="vgg16_weights_tf_dim_ordering_tf_kernels.h5",
    )


# ---------------------------------------------------------------------------- names and numbers


def test_unknown_layer(vgg16_notop_file):
    fails_cleanly("info", "--weights", vgg16_notop_file, "--layer", "block6_conv1", contains="unknown layer")


def test_class_out_of_range(vgg16_full_file, shared_data):
    cat = shared_data / "images" / "chelsea.png"
    fails_cleanly("predict", cat, "--weights", vgg16_full_file, "--class", "1000", contains="out of range")


def test_class_name_without_names(vgg16_full_file, shared_data):
    cat = shared_data / "images" / "chelsea.png"
    fails_cleanly("predict", cat, "--weights", vgg16_full_file, "--class", "tabbycat", contains="class")


def test_size_too_small_or_wrong(vgg16_notop_file):
    fails_cleanly("info", "--weights", vgg16_notop_file, "--size", "16", contains="too small")
    fails_cleanly("info", "--weights", vgg16_notop_file, "--size", "0", contains="--size")


def test_top_below_one(shared_data):
    fails_cleanly("predict", shared_data / "images" / "chelsea.png", "--top", "0", contains="--top")


@pytest.mark.parametrize(
    "args",
    [("info", "--wieghts", "x.h5"), ("predict",), ("predict", "x.png", "--device", "gpu"), ("frobnicate",)],
)
def test_usage_errors_are_one_line_too(args):
    fails_cleanly(*args, code=2)
