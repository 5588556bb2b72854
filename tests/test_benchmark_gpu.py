"""benchmarks/gpu.py (the CPU vs GPU comparison) where no GPU is present, and --device on the CLI.

* Without a GPU the script says so in one line and exits 0 (1 with --require-gpu), no traceback.
* ``--simulator`` runs the whole harness (validation, both sections, the report) under Numba's
  CUDA simulator on its tiny network and writes the table and JSON, every result within 1e-4.
* Every CLI command takes ``--device`` with the choices of ``commands.common.Device``, and
  ``--device cuda`` without a GPU is one ``error:`` line and exit 1.

The scripts run as subprocesses with NUMBA_ENABLE_CUDASIM removed from their environment
(conftest sets it for this process): the first test needs the machine as a user sees it.
"""

import ctypes.util
import json
import os
import pathlib
import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from commands import app
from commands.common import Device

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu.py"


def clean_env():
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    env["PYTHONPATH"] = str(ROOT)
    return env


def run(args, timeout=300):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                          env=clean_env(), timeout=timeout)


@pytest.fixture(scope="module")
def no_gpu():
    """Skips the no-GPU tests where a GPU is usable (there the full comparison would run): without
    the CUDA driver library there is none; with it, ``--detect`` decides."""
    if ctypes.util.find_library("cuda") is None:
        return
    detected = run([SCRIPT, "--detect"])
    assert detected.returncode == 0, detected.stderr
    if detected.stdout.startswith("GPU:"):
        pytest.skip(f"a GPU is present ({detected.stdout.strip()}): the full comparison would run")


def test_without_gpu_says_so_in_one_line_and_exits_0(no_gpu):
    done = run([SCRIPT])
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("no GPU: "), done.stdout
    assert "CUDA" in lines[0] and "Nothing was measured" in lines[0]
    assert "224" in lines[0] and "dream" in lines[0] and "filters" in lines[0]  # what it would have measured
    assert "Traceback" not in done.stderr and not done.stderr.strip()


def test_simulator_is_no_gpu_and_require_gpu_exits_1(tmp_path):
    """NUMBA_ENABLE_CUDASIM=1 in the environment is no GPU: the simulator is timed only on request."""
    env = dict(clean_env(), NUMBA_ENABLE_CUDASIM="1")
    done = subprocess.run([sys.executable, str(SCRIPT), "--require-gpu", "--out", str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert done.returncode == 1 and not done.stdout
    assert done.stderr.startswith("error: no GPU: ") and len(done.stderr.splitlines()) == 1, done.stderr
    assert "NUMBA_ENABLE_CUDASIM" in done.stderr and "Traceback" not in done.stderr
    assert not any(tmp_path.iterdir())


def test_simulator_runs_the_whole_harness(tmp_path):
    done = run([SCRIPT, "--simulator", "--out", tmp_path])
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    results = json.loads((tmp_path / "benchmark.json").read_text())
    table = (tmp_path / "benchmark.md").read_text()
    assert "meaningless" in table and "| forward 8px b1 |" in table
    rows = {r["name"]: r for r in results["rows"]}
    assert {r["section"] for r in rows.values()} == {"network", "techniques"}
    assert len(rows) == 4, list(rows)
    for row in rows.values():
        ran = [c for c, s in row["status"].items() if s != "n/a"]
        assert {"engine_cpu", "engine_cuda"} <= set(ran), row["name"]
        for contender in ran:
            assert row["status"][contender] == "ok" and row["error"][contender] < 1e-4, (row["name"], contender)
            assert len(row["times_s"][contender]) == 1 and row["times_s"][contender][0] > 0
    assert rows["forward 8px b1"]["status"]["pytorch_cpu"] == "ok"
    grad = rows["fwd + input grad 8px b1"]  # --simulator re-checks each gradient following its own decisions
    for label in ("engine CPU", "engine CUDA", "PyTorch CPU"):
        assert f"{label} gradient" in grad["note"] and "when the reference follows its own" in grad["note"]
    assert results["gpu"]["name"].startswith("none")
    assert results["settings"]["simulator"] is True


# ------------------------------------------------------------------------------ the CLI

COMMANDS = sorted(typer.main.get_command(app).commands)
CHOICES = [d.value for d in Device]


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_takes_device(name):
    """``--device`` exists and accepts only cpu/cuda/auto: a bad value is a usage error naming them."""
    result = CliRunner().invoke(app, [name, "--device", "quantum"])
    output = result.output
    assert "No such option" not in output, f"{name} has no --device option"
    assert result.exit_code == 2, output
    assert "quantum" in output and all(choice in output for choice in CHOICES), output


def test_device_cuda_without_gpu_is_one_line(tmp_path, vgg16_notop_file, no_gpu):
    out = tmp_path / "f.png"
    done = run([ROOT / "cli.py", "filters", "--layer", "block1_conv1", "--filters", "0", "--size", "32",
                "--steps", "1", "--device", "cuda", "--weights", vgg16_notop_file, "--out", out])
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "cuda" in lines[0], done.stderr
    assert "Traceback" not in done.stderr and not out.exists()
