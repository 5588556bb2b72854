"""The rough edges of issue 13 a new user trips over: help, --version, --save-array everywhere,
class names, output folders, stale temporary files, dream's default guard."""

import json
import os
import re

import numpy as np
import pytest
from typer.testing import CliRunner

import cli
from commands import COMMANDS
from commands.outputs import remove_stale_parts


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.delenv("CONVSCOPE_WEIGHTS", raising=False)
    monkeypatch.delenv("CONVSCOPE_CLASS_INDEX", raising=False)
    monkeypatch.chdir(tmp_path)


def invoke(*args):
    return CliRunner().invoke(cli.app, [str(a) for a in args])


def _names(command):
    args, kwargs, _ = command.cli_command
    return args[0] if args else command.__name__


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0 and re.fullmatch(r"convscope \S+\n", result.stdout)


@pytest.mark.parametrize("name", [_names(c) for c in COMMANDS])
def test_help_shows_flags_without_a_value(name):
    result = invoke(name, "--help")
    assert result.exit_code == 0
    assert "<bool>" not in result.stdout


# info and report make text; features writes its numbers as a Zarr store (--store) already
@pytest.mark.parametrize("name", [_names(c) for c in COMMANDS if _names(c) not in ("info", "report", "features")])
def test_every_command_that_makes_numbers_takes_save_array(name):
    assert "--save-array" in invoke(name, "--help").stdout


def test_predict_save_array(shared_data, vgg16_full_file, tmp_path):
    result = invoke("predict", shared_data / "images" / "chelsea.png", "--weights", vgg16_full_file,
                    "--save-array", tmp_path / "p.npy")
    assert result.exit_code == 0, result.output
    p = np.load(tmp_path / "p.npy")
    assert p.shape == (1, 1000) and abs(float(p.sum()) - 1) < 1e-4


def test_activations_save_array_has_every_layer(shared_data, vgg16_notop_file, tmp_path):
    result = invoke("activations", shared_data / "images" / "chelsea.png", "--layers", "block1_conv1,block2_pool",
                    "--size", "64", "--weights", vgg16_notop_file, "--out", tmp_path / "maps",
                    "--save-array", tmp_path / "maps.npz")
    assert result.exit_code == 0, result.output
    saved = np.load(tmp_path / "maps.npz")
    assert saved["block1_conv1"].shape == (64, 64, 64) and saved["block2_pool"].shape == (16, 16, 128)


def _class_index(path, prefix):
    path.write_text(json.dumps({str(i): [f"n{i:08d}", f"{prefix}{i}"] for i in range(1000)}))
    return path


def test_class_index_beside_the_weights_and_the_option(shared_data, vgg16_full_file, tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / vgg16_full_file.name).symlink_to(vgg16_full_file)
    _class_index(folder / "imagenet_class_index.json", "beside")
    photo = shared_data / "images" / "chelsea.png"
    result = invoke("predict", photo, "--weights", folder / vgg16_full_file.name, "--top", "3")
    assert result.exit_code == 0 and result.stdout.count("  beside") == 3, result.output
    option = _class_index(tmp_path / "mine.json", "option")
    result = invoke("predict", photo, "--weights", folder / vgg16_full_file.name, "--class-index", option)
    assert result.exit_code == 0 and "  option" in result.stdout and "beside" not in result.stdout


def test_a_failed_class_index_download_says_so(shared_data, vgg16_full_file, monkeypatch):
    from engine import resources
    from engine.resources import CLASS_INDEX_FILE, RemoteFile

    monkeypatch.setitem(resources.REMOTE_FILES, CLASS_INDEX_FILE,
                        RemoteFile("http://127.0.0.1:9/imagenet_class_index.json", 35_363, "0" * 32))
    monkeypatch.setattr("commands.common._download_offer", lambda: (lambda prompt: True))
    result = invoke("predict", shared_data / "images" / "chelsea.png", "--weights", vgg16_full_file)
    assert result.exit_code == 0
    notes = result.stderr.splitlines()
    assert len(notes) == 1 and notes[0].startswith("note: no class names: could not download"), result.stderr


def test_outputs_create_their_folders(vgg16_notop_file, tmp_path):
    result = invoke("weights", "--weights", vgg16_notop_file, "--out", tmp_path / "new" / "deeper" / "k.png",
                    "--save-array", tmp_path / "arrays" / "k.npy")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "new" / "deeper" / "k.png").is_file() and (tmp_path / "arrays" / "k.npy").is_file()
    (tmp_path / "a_file").write_text("x")
    result = invoke("weights", "--weights", vgg16_notop_file, "--out", tmp_path / "a_file" / "k.png")
    assert result.exit_code == 1 and "is a file, not a folder" in result.stderr


def test_stale_part_files_are_removed(vgg16_notop_file, tmp_path):
    out = tmp_path / "k.png"
    dead = tmp_path / ".k.png.999999999.abcd1234.part"  # its process is gone (pid beyond pid_max)
    alive = tmp_path / f".k.png.{os.getpid()}.abcd1234.part"  # a write in progress: kept
    other = tmp_path / ".other.png.999999999.abcd1234.part"  # another output's: not ours to judge
    for part in (dead, alive, other):
        part.write_bytes(b"half")
    result = invoke("weights", "--weights", vgg16_notop_file, "--out", out)
    assert result.exit_code == 0, result.output
    assert not dead.exists() and alive.exists() and other.exists()
    old = 10 ** 9  # 2001: older than any write in progress
    os.utime(alive, (old, old))
    remove_stale_parts(out)
    assert not alive.exists()


def test_tsne_hint_names_a_published_package(monkeypatch):
    import sys

    from engine.errors import ConvscopeError
    from engine.viz.dataset import require_tsne

    monkeypatch.setitem(sys.modules, "sklearn.manifold", None)  # import fails
    with pytest.raises(ConvscopeError, match="pip install scikit-learn") as info:
        require_tsne()
    assert "convscope[" not in str(info.value)


def test_dream_guard_stops_over_cooking_on_real_weights(shared_data, tmp_path):
    """block2 on the real weights climbs to a loss of 8.6e7 over 4 octaves; the default guard
    (--max-loss 1e6) ends the octaves early; --max-loss 0 turns it off."""
    weights = shared_data / "weights" / "vgg16_block1-2_imagenet.h5"
    photo = shared_data / "images" / "chelsea.png"
    common = ("dream", photo, "--layers", "block2_conv2=1", "--weights", weights, "--max-side", "160",
              "--octaves", "2", "--steps", "12")
    guarded = invoke(*common, "--out", tmp_path / "guarded.png")
    free = invoke(*common, "--max-loss", "0", "--out", tmp_path / "free.png")
    assert guarded.exit_code == 0 and free.exit_code == 0, guarded.output + free.output
    steps = [[int(n) for n in re.findall(r"\((\d+) steps\)", r.stdout)] for r in (guarded, free)]
    losses = [[float(v) for v in re.findall(r"-> ([\d.e+]+) \(", r.stdout)] for r in (guarded, free)]
    assert steps[1] == [12, 12] and sum(steps[0]) < 24
    assert max(losses[1]) > 1e6 and max(losses[0]) < max(losses[1])
    assert "note: the photo is 451x300; working at 160x106" in guarded.stdout
