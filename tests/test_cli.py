"""The command line on synthetic official-layout files: info, predict, downloads, output files.

Commands run in-process through Typer's CliRunner (stdin/stderr are not terminals there, so no
prompt and no progress bar appears); one test runs ``python cli.py`` as a real process.
"""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

import cli
import engine
from engine.errors import ConvscopeError
from commands import common, outputs
from engine.images import load_image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROW = re.compile(r"^\s*(\d+)\. (\d\.\d{4})  (.+)$")


@pytest.fixture(autouse=True)
def no_user_files(tmp_path, monkeypatch):
    """Never find the user's own weights or class index: an empty Keras cache, no overrides."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.delenv("CONVSCOPE_WEIGHTS", raising=False)
    monkeypatch.delenv("CONVSCOPE_CLASS_INDEX", raising=False)


def invoke(*args, **kwargs):
    result = CliRunner().invoke(cli.app, [str(a) for a in args], **kwargs)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def expected_probabilities(weights, image_path):
    model = engine.load(weights)
    x = engine.preprocess_input(load_image(image_path, size=(224, 224)))
    return model.forward(x, outputs=["predictions"])["predictions"][0]


# ---------------------------------------------------------------------------- info


def test_info_notop_at_96(vgg16_notop_file):
    result = invoke("info", "--weights", vgg16_notop_file, "--size", 96)
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    rows = {}
    for line in result.stdout.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[1] in ("input", "conv2d", "maxpool2d"):
            rows[parts[0]] = (parts[1], parts[2], int(parts[3].replace(",", "")))
    assert len(rows) == 19  # the input and 18 layers, as Keras' summary lists them
    assert rows["input"] == ("input", "96x96x3", 0)
    assert rows["block1_conv1"] == ("conv2d", "96x96x64", 1792)
    assert rows["block3_pool"] == ("maxpool2d", "12x12x256", 0)
    assert rows["block5_conv3"] == ("conv2d", "6x6x512", 2_359_808)
    assert rows["block5_pool"] == ("maxpool2d", "3x3x512", 0)
    assert sum(r[2] for r in rows.values()) == 14_714_688
    assert "14,714,688 parameters" in result.stdout
    assert str(vgg16_notop_file) in result.stdout and "weights-only" in result.stdout


def test_info_one_layer(vgg16_notop_file):
    result = invoke("info", "--weights", vgg16_notop_file, "--layer", "block4_conv1")
    assert result.exit_code == 0
    assert re.search(r"block4_conv1\s+conv2d\s+28x28x512\s+1,180,160", result.stdout)
    assert "block1_conv1" not in result.stdout


def test_info_full_file(vgg16_full_file):
    result = invoke("info", "--weights", vgg16_full_file)
    assert result.exit_code == 0, result.stderr
    assert re.search(r"fc1\s+dense\s+4096\s+102,764,544", result.stdout)
    assert re.search(r"predictions\s+dense\s+1000\s+4,097,000", result.stdout)
    assert "138,357,544 parameters" in result.stdout and "classifier: yes" in result.stdout


# ---------------------------------------------------------------------------- predict


def test_predict_matches_engine(vgg16_full_file, shared_data):
    cat = shared_data / "images" / "chelsea.png"
    result = invoke("predict", cat, "--weights", vgg16_full_file)
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    rows = [ROW.match(line) for line in result.stdout.splitlines()]
    assert len(rows) == 5 and all(rows)
    probabilities = [float(m.group(2)) for m in rows]
    assert [int(m.group(1)) for m in rows] == [1, 2, 3, 4, 5]
    assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1.0
    # No class index in the (empty) Keras cache: classes are shown by index.
    indices = [int(m.group(3).removeprefix("class ")) for m in rows]
    want = expected_probabilities(vgg16_full_file, cat)
    assert indices == list(np.argsort(-want, kind="stable")[:5])
    np.testing.assert_allclose(probabilities, want[indices], atol=5e-5)


def test_predict_batch_names_grayscale_and_class(vgg16_full_file, shared_data, monkeypatch):
    monkeypatch.setenv("CONVSCOPE_CLASS_INDEX", str(shared_data / "imagenet_class_index.json"))
    camera = shared_data / "images" / "camera.png"  # single-channel
    cat = shared_data / "images" / "chelsea.png"
    result = invoke("predict", camera, cat, "--weights", vgg16_full_file, "--top", 3, "--class", "tabby")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"{camera}:" and lines[5] == f"{cat}:"
    index = json.loads((shared_data / "imagenet_class_index.json").read_text())
    names = [index[str(i)][1] for i in range(1000)]
    for header, image in ((0, camera), (5, cat)):
        want = expected_probabilities(vgg16_full_file, image)
        top = np.argsort(-want, kind="stable")[:3]
        for k, line in enumerate(lines[header + 1 : header + 4]):
            match = ROW.match(line)
            assert match and match.group(3) == names[top[k]]
            assert abs(float(match.group(2)) - want[top[k]]) < 5e-5
        extra = lines[header + 4]
        assert extra.startswith("  class 281 (tabby): ")
        rank = int(extra.rsplit("rank ", 1)[1])
        assert rank == 1 + int(np.sum(want > want[281]))


# ---------------------------------------------------------------------------- weights download offer


def test_no_weights_offers_download_only_at_a_terminal(vgg16_notop_file, monkeypatch):
    from engine import resources

    fetched = []

    def fake_download(remote, dest, progress=None, hint=None):
        data = vgg16_notop_file.read_bytes()
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with open(dest, "wb") as out:
            out.write(data)
        if progress is not None:
            progress(len(data), len(data))
        fetched.append(os.path.basename(dest))
        return dest

    monkeypatch.setattr(resources, "download_file", fake_download)
    # Not a terminal: no question, the one-line error.
    result = invoke("info")
    assert result.exit_code == 1 and result.stderr.startswith("error: VGG16 weights not found")
    assert fetched == []
    # At a terminal: asked; "no" keeps the error, "yes" downloads and goes on.
    monkeypatch.setattr(common, "_interactive", lambda stream: True)  # commands/common.py asks
    result = invoke("info", input="n\n")
    assert result.exit_code == 1 and "Download" in result.stderr and fetched == []
    result = invoke("info", input="y\n")
    assert result.exit_code == 0, result.stderr
    assert fetched == ["vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"]
    assert "14,714,688 parameters" in result.stdout


# ---------------------------------------------------------------------------- helpers for commands


def test_progress_is_silent_off_a_terminal(capsys):
    with common.progress("working", total=3) as update:
        for i in range(3):
            update(i + 1)
    assert capsys.readouterr() == ("", "")


def test_write_output_is_atomic(tmp_path):
    target = tmp_path / "out.bin"

    def broken(file):
        file.write(b"partial")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        outputs.write_output(target, broken)
    assert os.listdir(tmp_path) == []  # neither the file nor a temporary

    outputs.write_output(target, lambda f: f.write(b"first"))
    assert target.read_bytes() == b"first"
    with pytest.raises(ConvscopeError, match="already exists"):
        outputs.write_output(target, lambda f: f.write(b"second"))
    assert target.read_bytes() == b"first"
    with pytest.raises(RuntimeError):
        outputs.write_output(target, broken, overwrite=True)
    assert target.read_bytes() == b"first" and os.listdir(tmp_path) == ["out.bin"]
    outputs.write_output(target, lambda f: f.write(b"second"), overwrite=True)
    assert target.read_bytes() == b"second" and os.listdir(tmp_path) == ["out.bin"]
    mode = os.stat(target).st_mode & 0o777
    assert mode & 0o644 == 0o644 or mode & 0o600 == 0o600


def test_save_image_round_trip_and_checks(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (40, 48, 3)).astype(np.uint8)
    path = outputs.save_image(tmp_path / "pic.png", rgb)
    np.testing.assert_array_equal(load_image(path), rgb)
    with pytest.raises(ConvscopeError, match="unsupported output type"):
        outputs.check_output(tmp_path / "pic.xyz")
    assert outputs.check_output(tmp_path / "missing" / "pic.png")  # folders are made when written
    assert not (tmp_path / "missing").exists()
    with pytest.raises(ConvscopeError, match="is a file, not a folder"):
        outputs.check_output(tmp_path / "pic.png" / "pic.png")
    with pytest.raises(ConvscopeError, match="is a directory"):
        outputs.check_output(tmp_path)


def test_resolve_class():
    names = ["tench", "goldfish", "great_white_shark"]
    assert common.resolve_class("2", 3, names) == 2
    assert common.resolve_class("Great white shark", 3, names) == 2
    for bad in ("3", "-1", "shark"):
        with pytest.raises(ConvscopeError):
            common.resolve_class(bad, 3, names)
    with pytest.raises(ConvscopeError, match="no class names"):
        common.resolve_class("tench", 3, None)


# ---------------------------------------------------------------------------- the real entry point


def test_python_cli_py(vgg16_notop_file, tmp_path):
    env = dict(os.environ, KERAS_HOME=str(tmp_path))
    env.pop("CONVSCOPE_WEIGHTS", None)
    run = subprocess.run(
        [sys.executable, "cli.py", "info", "--weights", str(vgg16_notop_file), "--size", "64"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert re.search(r"block5_pool\s+maxpool2d\s+2x2x512", run.stdout)
    run = subprocess.run(
        [sys.executable, "cli.py", "info", "--weights", str(tmp_path / "none.h5")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 1 and run.stdout == ""
    assert run.stderr.count("\n") == 1 and run.stderr.startswith("error: ") and "none.h5" in run.stderr


def test_engine_never_imports_the_command_line():
    """Embedders import engine where no CLI library is wanted: every engine module loads without
    Typer, Rich or the commands package."""
    code = (
        "import pkgutil, importlib, sys, engine\n"
        "for m in pkgutil.walk_packages(engine.__path__, 'engine.'):\n"
        "    importlib.import_module(m.name)\n"
        "bad = sorted(n for n in sys.modules if n.split('.')[0] in ('typer', 'rich', 'click', 'commands'))\n"
        "print(len(list(pkgutil.walk_packages(engine.__path__, 'engine.'))), bad)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    count, bad = done.stdout.split(" ", 1)
    assert int(count) > 20  # the walk really visited engine's modules
    assert bad.strip() == "[]"
