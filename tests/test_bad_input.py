"""Every bad input gets exactly one ``error: ...`` line on stderr, a non-zero exit, no traceback,
and leaves no file behind (commands run with the temporary folder as working directory)."""

import io
import struct
import zlib

import numpy as np
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
    assert result.exit_code == code if code is not None else result.exit_code in (1, 2), (result.exit_code, result.stderr)
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


# ---------------------------------------------------------------------------- option values (issue 13)


@pytest.mark.parametrize("args, contains", [
    (("filters", "--rotate", "1e308"), "--rotate"),
    (("filters", "--step-size", "inf"), "--step-size"),
    (("filters", "--l2", "-inf"), "--l2"),
    (("filters", "--tv", "nan"), "--tv"),
    (("filters", "--scale", "1e300"), "--scale"),
    (("dream", "PHOTO", "--octave-scale", "inf"), "--octave-scale"),
    (("dream", "PHOTO", "--step-size", "1e308"), "--step-size"),
    (("dream", "PHOTO", "--layers", "block1_conv1=inf"), "finite"),
    (("dream", "PHOTO", "--layers", "block1_conv1=nan"), "finite"),
    (("dream", "PHOTO", "--max-loss", "nan"), "--max-loss"),
    (("fool", "PHOTO", "--target", "3", "--l2", "-inf"), "--l2"),
    (("gradcam", "PHOTO", "--alpha", "nan"), "--alpha"),
])
def test_non_finite_and_absurd_option_values(args, contains, shared_data, vgg16_notop_file):
    photo = shared_data / "images" / "chelsea.png"
    args = [photo if a == "PHOTO" else a for a in args] + ["--weights", vgg16_notop_file]
    line = fails_cleanly(*args, code=None)
    assert contains in line, line


@pytest.mark.parametrize("args, contains", [
    (("filters", "--size", "100000"), "--size"),
    (("filters", "--size", "20000"), "GiB"),
    (("activations", "PHOTO", "--size", "100000"), "--size"),
    (("activations", "PHOTO", "--size", "30000"), "lower --size"),
    (("weights", "--zoom", "100000"), "lower --zoom"),
    (("dream", "PHOTO", "--max-side", "0", "--tile", "65536", "--layers", "block5_conv3"), None),
])
def test_sizes_are_bounded_before_allocating(args, contains, shared_data, vgg16_notop_file, monkeypatch):
    """A refusal names the estimate and the option; measured against 4 GiB available here."""
    from engine import resources

    monkeypatch.setattr(resources, "available_memory", lambda: 4 << 30)
    monkeypatch.setattr("commands.limits.available_memory", lambda: 4 << 30)
    photo = shared_data / "images" / "chelsea.png"
    if args[0] == "dream":  # a 451x300 photo fits; claim a tiny machine instead
        monkeypatch.setattr("commands.limits.available_memory", lambda: 10 << 20)
    args = [photo if a == "PHOTO" else a for a in args] + ["--weights", vgg16_notop_file]
    line = fails_cleanly(*args, code=None)
    assert contains is None or contains in line, line
    if "GiB" in line:
        assert "needs about" in line and "available" in line


@pytest.mark.parametrize("args", [
    ("filters", "--layer", "logits"),
    ("activations", "PHOTO", "--layers", "logits"),
    ("dream", "PHOTO", "--layers", "logits=1"),
    ("invert", "PHOTO", "--layer", "logits"),
])
def test_logits_only_with_a_classifier(args, shared_data, vgg16_notop_file):
    photo = shared_data / "images" / "chelsea.png"
    args = [photo if a == "PHOTO" else a for a in args] + ["--weights", vgg16_notop_file]
    line = fails_cleanly(*args, contains="no classifier")
    assert "'logits'" in line and "block5_pool" in line


def test_dream_on_logits_with_a_classifier(shared_data, vgg16_full_file):
    fails_cleanly("dream", shared_data / "images" / "chelsea.png", "--layers", "logits=1", "--weights",
                  vgg16_full_file, contains="'logits' is not one")


def test_unknown_layer_on_a_notop_file_does_not_offer_logits(vgg16_notop_file):
    line = fails_cleanly("filters", "--layer", "block9_conv1", "--weights", vgg16_notop_file)
    assert "unknown layer 'block9_conv1'" in line and "logits" not in line


def test_dream_checks_everything_before_saying_dreaming(shared_data, vgg16_notop_file):
    # block5 is too small at the smallest octave of a 100 px photo: nothing is printed before the error
    fails_cleanly("dream", shared_data / "images" / "chelsea.png", "--max-side", "100", "--weights",
                  vgg16_notop_file, contains="too small")


def test_saliency_without_a_classifier_names_the_command(shared_data, vgg16_notop_file):
    fails_cleanly("saliency", shared_data / "images" / "chelsea.png", "--weights", vgg16_notop_file,
                  contains="saliency needs the VGG16 file with the classifier")


def test_fool_without_a_classifier(shared_data, vgg16_notop_file):
    fails_cleanly("fool", shared_data / "images" / "chelsea.png", "--target", "3", "--weights",
                  vgg16_notop_file, contains="fool needs the VGG16 file with the classifier")


def test_cuda_without_the_extra_says_its_advice_once(vgg16_notop_file, monkeypatch):
    import importlib

    from engine import backend

    def no_cuda(name, *args):
        if name == "kernels.cuda":
            raise ImportError('the CUDA backend needs the numba-cuda package: pip install -e ".[cuda]"')
        return importlib.import_module(name, *args)

    monkeypatch.setattr(backend.importlib, "import_module", no_cuda)
    line = fails_cleanly("info", "--weights", vgg16_notop_file, "--device", "cuda")
    assert line.count("pip install") == 1, line


# ---------------------------------------------------------------------------- images (regressions)


def _jpeg_with_corrupt_exif(path):
    exif = b"Exif\x00\x00" + b"MM\x00\x2a\x00\x00\x00\x08" + b"\x00\x05" + b"\xff" * 40
    picture = Image.effect_noise((64, 48), 40).convert("RGB")
    picture.save(path, "JPEG", exif=exif)


@pytest.mark.parametrize("name", ["corrupt_exif.jpg", "cmyk.jpg", "palette_alpha.png", "gray16.png", "animated.gif"])
def test_odd_images_work_with_nothing_on_stderr(name, tmp_path, vgg16_notop_file):
    path = tmp_path / name
    if name == "corrupt_exif.jpg":
        _jpeg_with_corrupt_exif(path)
    elif name == "cmyk.jpg":
        Image.new("CMYK", (40, 40), (10, 200, 30, 0)).save(path)
    elif name == "palette_alpha.png":
        picture = Image.new("P", (40, 40), 3)
        picture.info["transparency"] = 3
        picture.save(path)
    elif name == "gray16.png":
        Image.fromarray(np.full((40, 40), 40000, np.uint16)).save(path)
    else:
        frames = [Image.new("RGB", (40, 40), c) for c in ((255, 0, 0), (0, 255, 0))]
        frames[0].save(path, save_all=True, append_images=frames[1:])
    result = CliRunner().invoke(cli.app, ["activations", str(path), "--layers", "block1_conv1", "--size", "32",
                                          "--weights", str(vgg16_notop_file), "--out", str(tmp_path / "maps")])
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert (tmp_path / "maps" / "block1_conv1.png").is_file()


def test_tiny_photo_is_fine_where_it_is_resized_and_refused_where_not(tmp_path, vgg16_full_file):
    path = tmp_path / "tiny.png"
    path.write_bytes(_png_bytes((16, 12)))
    result = CliRunner().invoke(cli.app, ["predict", str(path), "--weights", str(vgg16_full_file)])
    assert result.exit_code == 0 and result.stderr == "", result.output
    assert result.stdout.count("  class ") == 5
    fails_cleanly("dream", path, "--weights", vgg16_full_file, contains="needs at least 32x32")
