"""Training across processes: a run killed with SIGKILL and resumed ends with the same weights as an
uninterrupted one; 2-process DDP (gloo) gives the weights of 1 process with the same global batch."""
import json
import signal
import subprocess
import sys
import time

import pytest

from hbfast.cli import main
from testing import subprocess_env
from train_fixtures import assert_same_weights, tiny_bert, write_pairs_jsonl


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("train-proc")
    return tiny_bert(root / "bert"), write_pairs_jsonl(root / "pairs.jsonl"), root / "cache"


def _args(setup, out, *extra):
    model, data, _ = setup
    return ["train", "--model", str(model), "--data", str(data), "--batch-size", "8", "--max-length", "16",
            "--lr", "1e-3", "--out", str(out), "--no-progress", *extra]


def _env(setup, **extra):
    return subprocess_env(HBFAST_CACHE=str(setup[2]), **extra)


def _logged_steps(out) -> int:
    try:
        lines = (out / "log.jsonl").read_text().splitlines()
        return json.loads(lines[-1])["step"] if lines else 0
    except (FileNotFoundError, ValueError, IndexError):
        return 0


def test_resume_after_sigkill_gives_the_uninterrupted_weights(setup, tmp_path, monkeypatch):
    steps = ["--steps", "40", "--save-every", "4", "--heldout", "0.2", "--eval-every", "3"]
    out = tmp_path / "killed"
    with open(tmp_path / "stderr.txt", "wb") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "hbfast", *_args(setup, out, *steps)], env=_env(setup),
                                stdout=subprocess.DEVNULL, stderr=stderr)
        deadline = time.monotonic() + 120
        while _logged_steps(out) < 9 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "stderr.txt").read_text()[-2000:]
    assert not (out / "final").exists() and 9 <= _logged_steps(out) < 40
    done = subprocess.run([sys.executable, "-m", "hbfast", *_args(setup, out, *steps, "--resume")],
                          env=_env(setup), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resumed from" in done.stdout
    log = [json.loads(x)["step"] for x in (out / "log.jsonl").read_text().splitlines()]
    assert log == list(range(1, 41))
    monkeypatch.setenv("HBFAST_CACHE", str(setup[2]))
    assert main(_args(setup, tmp_path / "whole", *steps)) == 0
    assert_same_weights(out / "final", tmp_path / "whole" / "final")


def test_two_process_ddp_equals_one_process(setup, tmp_path, monkeypatch):
    common = ["--steps", "3", "--dropout", "0", "--save-every", "2", "--batch-type", "hybrid",
              "--no-bf16"]  # a float32 equality (bf16 autocast rounds each process's products its own way)
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "hbfast", *_args(setup, tmp_path / "ddp", *common)],
                         env=_env(setup, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert {p.name for p in (tmp_path / "ddp" / "checkpoint-2").glob("rng-rank*.pt")} == {"rng-rank0.pt", "rng-rank1.pt"}
    monkeypatch.setenv("HBFAST_CACHE", str(setup[2]))
    assert main(_args(setup, tmp_path / "one", *common)) == 0
    assert_same_weights(tmp_path / "ddp" / "final", tmp_path / "one" / "final", atol=1e-5)
