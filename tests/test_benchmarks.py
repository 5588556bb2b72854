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


def test_targets_preset_is_the_issues_scale():
    args = run.parse_args(["--targets"])
    assert args.sections == ["network", "techniques", "memory"]
    assert args.filters == ("block3_conv1", 200, 128, 20, 32) and args.dream == (512, 4, 20)
    assert args.sizes == [224, 128] and (args.memory_size, args.memory_batch) == (224, 8)
    assert run.parse_args(["--targets", "--only", "memory"]).sections == ["memory"]


def test_targets_read_ratios_off_the_rows():
    from benchmarks import targets

    def row(section, name, ms):
        return {"section": section, "name": name, "ms": ms, "status": {c: "ok" for c in ms}}

    results = {
        "settings": {"filters": ["block3_conv1", 200, 128, 20, 32], "dream": [96, 1, 1],
                     "memory_size": 224, "memory_batch": 8},
        "rows": [row("techniques", "filters block3_conv1 x200 128px 20 steps",
                     {"engine": 90.0, "pytorch": 200.0, "pytorch_batched": 150.0, "keras": 300.0}),
                 row("techniques", "dream 96px 1 octaves x 1 steps", {"engine": 10.0, "pytorch": 30.0}),
                 row("network", "fwd + input grad 224px b1", {"engine": 50.0, "pytorch": 100.0})],
        "memory": [{"contender": "engine", "work": "forward + forward_grad 224px b8", "peak_mib": 1100.0},
                   {"contender": "pytorch", "work": "forward + forward_grad 224px b8", "peak_mib": 1000.0}],
    }
    got = {t["target"]: t for t in targets.targets(results)}
    keras = got["filters: engine / Keras example (one at a time)"]
    assert keras["ratio"] == pytest.approx(0.3) and keras["met"] and keras["issue_scale"]
    batched = got["filters: engine / PyTorch batched"]
    assert batched["ratio"] == pytest.approx(0.6) and batched["met"] is False
    dream = got["dream: engine / PyTorch, same algorithm"]
    assert dream["met"] and not dream["issue_scale"]
    assert got["dream: engine / Keras example"]["met"] is None  # Keras not run
    assert got["fwd + input grad 224 px b1: engine / PyTorch"]["ratio"] == pytest.approx(0.5)
    assert got["fwd + input grad 128 px b1: engine / PyTorch"]["configuration"] == "not run"
    memory = got["peak memory, fwd + input grad: engine / PyTorch"]
    assert memory["ratio"] == pytest.approx(1.1) and memory["met"] is False
    text = targets.table(list(got.values()))
    assert "| filters: engine / PyTorch batched | filters block3_conv1 x200 128px 20 steps | 90.0 ms | 150 ms | 0.60 | 0.50 | missed |" in text
    assert "dream 96px 1 octaves x 1 steps (not the issue's scale)" in text


def test_techniques_section_times_batched_pytorch_and_reports_targets(tmp_path):
    """--quick techniques: filters (engine, PyTorch one at a time and batched) and a dream, each
    gated on its first step, timed, and read into the targets table."""
    pytest.importorskip("torch")
    argv = ["--quick", "--only", "techniques", "--contenders", "engine,pytorch", "--pause", "0",
            "--out", str(tmp_path)]
    assert run.main(argv) == 0
    results = json.loads((tmp_path / "benchmark.json").read_text())
    filters = next(r for r in results["rows"] if r["name"].startswith("filters"))
    assert filters["status"] == {"engine": "ok", "pytorch": "ok", "pytorch_batched": "ok"}
    assert all(filters["ms"][c] > 0 for c in filters["status"])
    got = {t["target"]: t for t in results["targets"]}
    assert got["filters: engine / PyTorch batched"]["ratio"] > 0
    assert got["dream: engine / PyTorch, same algorithm"]["ratio"] > 0
    text = (tmp_path / "benchmark.md").read_text()
    assert "## Issue 16 targets" in text and "PyTorch batched ms" in text


def test_ab_compares_a_revisions_kernels_with_the_trees(capsys):
    """benchmarks/ab.py: HEAD's pool module (compiled afresh) against the tree's, through the public
    ops; the same code gives the same bits."""
    import shutil

    from benchmarks import ab

    if shutil.which("git") is None or subprocess.run(["git", "rev-parse", "HEAD"], cwd=run.ROOT,
                                                     capture_output=True).returncode != 0:
        pytest.skip("not a git checkout")
    assert ab.main(["--rev", "HEAD", "--modules", "kernels/cpu/pool.py", "--cases", "pool:2x9x8x3", "--reps", "2"]) == 0
    out = capsys.readouterr().out
    assert "kernels.cpu.maxpool_backward" in out
    assert "max-pool 2x9x8x3 fwd+bwd:" in out and "same bits: True" in out
