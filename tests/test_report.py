"""``cli.py report``: one self-contained HTML page, every picture a PNG data URI that decodes."""

import base64
import io
import re

import pytest
from PIL import Image
from typer.testing import CliRunner

import cli

SECTIONS = ("predictions", "gradcam", "saliency", "occlusion", "activations", "dream", "parameters")


def invoke(*args):
    return CliRunner().invoke(cli.app, [str(a) for a in args])


@pytest.fixture(autouse=True)
def no_user_files(tmp_path_factory, monkeypatch):
    """No weights or class names from the user's home: the test sees only what it passes."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path_factory.mktemp("keras_home")))
    monkeypatch.delenv("CONVSCOPE_WEIGHTS", raising=False)
    monkeypatch.delenv("CONVSCOPE_CLASS_INDEX", raising=False)


@pytest.fixture
def photo(shared_data):
    return shared_data / "images" / "chelsea.png"


def test_report_fast(vgg16_full_file, photo, tmp_path):
    out = tmp_path / "report.html"
    result = invoke("report", photo, "--weights", vgg16_full_file, "--fast", "--seed", "3", "--out", out)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"wrote {out}")
    text = out.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    for key in SECTIONS:
        assert f'<section id="{key}">' in text
    uris = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    # the photo, Grad-CAM, 2 saliency maps (--fast), occlusion, 8 activation layers, the dream
    assert len(uris) == 1 + 1 + 2 + 1 + 8 + 1
    sizes = []
    for uri in uris:
        with Image.open(io.BytesIO(base64.b64decode(uri))) as picture:
            assert picture.format == "PNG"
            picture.load()
            sizes.append(picture.size)
    assert sizes[0] == (451, 300) and sizes[1] == (451, 300) and sizes[-1] == (451, 300)
    assert "src=\"http" not in text and "<script" not in text  # nothing fetched, nothing run
    for parameter in (str(vgg16_full_file), "<td>seed</td><td>3</td>", "<td>mode</td><td>fast</td>",
                      "<td>occlusion_stride</td><td>32</td>", "<td>dream_octaves</td><td>2</td>",
                      "<td>dream_steps</td><td>3</td>", "<td>saliency_methods</td><td>vanilla, guided</td>"):
        assert parameter in text
    # No silent overwrite.
    again = invoke("report", photo, "--weights", vgg16_full_file, "--fast", "--out", out)
    assert again.exit_code == 1 and again.stderr.startswith("error: ") and "already exists" in again.stderr
    assert out.read_text(encoding="utf-8") == text


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing image", "missing.jpg"),
        ("not html", "unsupported output type"),
        ("notop", "needs the VGG16 file with the classifier"),
    ],
)
def test_report_bad_input(case, message, vgg16_full_file, vgg16_notop_file, photo, tmp_path):
    out = tmp_path / ("report.png" if case == "not html" else "report.html")
    image = tmp_path / "missing.jpg" if case == "missing image" else photo
    weights = vgg16_notop_file if case == "notop" else vgg16_full_file
    result = invoke("report", image, "--weights", weights, "--fast", "--out", out)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert message in result.stderr
    assert list(tmp_path.iterdir()) == []  # no report, no temporary file
