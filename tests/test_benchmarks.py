"""Smoke test of benchmarks/run.py at a tiny size: it validates, times, and writes its reports.

Runs the network section at 32 px, batch 1, one repetition, with the engine and PyTorch when it
is installed (ONNX export and Keras are left out: they take seconds; ``--quick`` covers them), and
checks the markdown, JSON and PNG it writes; plus the chart and table code on made-up rows.
"""

import importlib.util
import json
import subprocess
import sys

import pytest

from benchmarks import report, run
from benchmarks.timing import interleaved


def _installed(name):
    return importlib.util.find_spec(name) is not None


def test_network_section_validates_times_and_reports(tmp_path):
    contenders = ["engine"] + (["pytorch"] if _installed("torch") else [])
    argv = ["--quick", "--only", "network", "--reps", "1", "--warmup", "0", "--pause", "0",
            "--contenders", ",".join(contenders), "--out", str(tmp_path)]
    assert run.main(argv) == 0
    results = json.loads((tmp_path / "benchmark.json").read_text())
    rows = results["rows"]
    assert [r["name"] for r in rows] == ["forward 32px b1", "fwd + input grad 32px b1"]
    for row in rows:
        assert row["status"]["engine"] == "ok" and len(row["times_s"]["engine"]) == 1
        assert row["error"]["engine"] < 1e-4
    if "pytorch" in contenders:
        assert rows[0]["ms"]["pytorch"] > 0 and rows[0]["error"]["pytorch"] < 1e-4
    assert results["machine"]["cores_logical"] >= 1 and results["machine"]["versions"]["numba"]
    assert "| forward 32px b1 |" in (tmp_path / "benchmark.md").read_text()
    assert (tmp_path / "ratios.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_interleaved_rotates_and_records_every_repetition():
    calls = []
    times = interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, reps=2, warmup=1, pause=0)
    assert calls == ["a", "b", "a", "b", "b", "a"]
    assert [len(v) for v in times.values()] == [2, 2]


def test_table_and_chart_mark_failures(tmp_path):
    pytest.importorskip("PIL")
    row = {"section": "network", "name": "forward 8px b1", "flops": 2e9, "note": "",
           "ms": {"engine": 10.0, "pytorch": 20.0}, "times_s": {},
           "error": {"engine": 1e-7, "pytorch": 2e-7, "onnxruntime": 3e-3},
           "status": {"engine": "ok", "pytorch": "ok", "onnxruntime": "FAIL", "keras": "n/a"}}
    table = report.timing_table([row])
    assert "| forward 8px b1 | 10.0 | 20.0 | FAIL (3.0e-03) | — | 0.50 | — | 200.0 | 3.0e-03 |" in table
    path = report.ratio_chart([row], tmp_path / "chart.png")
    from PIL import Image

    assert Image.open(path).size[0] == 1000


def test_unknown_section_is_a_usage_error():
    with pytest.raises(SystemExit):
        run.parse_args(["--only", "nothing"])


@pytest.mark.parametrize("contender", ["engine", "pytorch"])
def test_worker_measures_a_dream_in_a_fresh_process(vgg16_notop_file, contender):
    """The memory section's DeepDream rows: worker.py runs the dream (2 octaves, 1 step here) in
    its own process and reports its phases and peak RSS."""
    if contender == "pytorch" and not _installed("torch"):
        pytest.skip("torch is not installed")
    cmd = [sys.executable, str(run.ROOT / "benchmarks" / "worker.py"), contender, str(vgg16_notop_file),
           "--size", "128", "--threads", "1", "--work", "dream", "--octaves", "2", "--steps", "1"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=run.ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert "first call done" in lines
    record = json.loads(next(line for line in lines if line.startswith("{")))
    assert record["work"] == ["dream"]
    assert record["rss_end_kib"] >= record["rss_loaded_kib"] > 0
    assert record["phases"]["first call"] > 0
