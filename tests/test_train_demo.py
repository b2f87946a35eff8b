"""The plain-PyTorch example script and ``hbfast demo --quick`` run end to end."""
import json
import subprocess
import sys
from pathlib import Path


from hbfast.cli import main
from testing import subprocess_env
from train_fixtures import tiny_bert, write_pairs_jsonl

ROOT = Path(__file__).resolve().parents[1]


def test_example_train_loop_runs(tmp_path):
    model, data = tiny_bert(tmp_path / "bert"), write_pairs_jsonl(tmp_path / "pairs.jsonl")
    env = subprocess_env(HBFAST_CACHE=str(tmp_path / "cache"))
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "train_loop.py"), "--model", str(model),
                           "--data", str(data), "--steps", "3", "--batch-size", "6", "--out", str(tmp_path / "m")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    losses = [float(line.split()[-1]) for line in done.stdout.splitlines() if line.startswith("step ")]
    assert len(losses) == 3 and all(x > 0 for x in losses)
    assert (tmp_path / "m" / "model.safetensors").is_file()


def test_demo_quick_writes_results_and_plot(tmp_path, monkeypatch, capsys):
    from hbfast.train import demo

    monkeypatch.setenv("HBFAST_CACHE", str(tmp_path / "cache"))
    # --quick itself (2-3 minutes) is measured in benchmarks/RESULTS.md; here its path at a test's size.
    assert demo.QUICK["steps"] < demo.DEMO["steps"] and demo.QUICK["paragraphs"] < demo.DEMO["paragraphs"]
    monkeypatch.setattr(demo, "QUICK", {**demo.QUICK, "batch_size": 8, "max_length": 24})
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--steps", "2", "--paragraphs", "2", "--out", str(out), "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results["runs"]) == ["zero-shot", "X-X", "X-Y", "hybrid"]
    for name, run in results["runs"].items():
        for metric in ("mono", "cross", "multi"):
            assert 0.0 < run[metric] <= 1.0
        assert run["rank_distance"] >= 0 and "settings" in run
    assert results["runs"]["hybrid"]["settings"]["alpha"] == 0.5
    assert results["settings"]["batch_size"] == 8 and results["settings"]["steps"] == 2
    assert results["runs"]["X-X"]["settings"]["batch_type"] == "X-X"
    assert (out / "results.png").stat().st_size > 10_000
    for name in ("X-X", "X-Y", "hybrid"):
        assert (out / name / "final" / "model.safetensors").is_file()
        assert len((out / name / "log.jsonl").read_text().splitlines()) == 2
    assert "rank dist" in capsys.readouterr().out


def test_sweep_writes_one_run_per_alpha(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HBFAST_CACHE", str(tmp_path / "cache"))
    model, data = tiny_bert(tmp_path / "bert"), write_pairs_jsonl(tmp_path / "pairs.jsonl")
    from lareqa_fixtures import tiny_lareqa_dir

    lareqa = tiny_lareqa_dir(tmp_path / "lareqa")
    out = tmp_path / "sweep"
    assert main(["sweep", "--alpha", "0,1", "--model", str(model), "--data", str(data), "--steps", "2",
                 "--batch-size", "6", "--max-length", "16", "--eval-data", str(lareqa),
                 "--out", str(out), "--no-progress"]) == 0
    sweep = json.loads((out / "sweep.json").read_text())
    assert [r["alpha"] for r in sweep["runs"]] == [0.0, 1.0]
    assert all(0 < r["mono"] <= 1 and r["rank_distance"] >= 0 for r in sweep["runs"])
    assert (out / "sweep.png").is_file()
    logs = [(out / f"alpha-{a}" / "log.jsonl").read_text() for a in ("0", "1")]
    assert "X-X" not in logs[0] and "X-Y" not in logs[1]
    assert main(["sweep", "--alpha", "0,2", "--out", str(out)]) == 2
    assert "distinct values in [0, 1]" in capsys.readouterr().err
