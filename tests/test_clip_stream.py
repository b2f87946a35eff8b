"""``train-clip --stream``: hybrid batches streamed from tar shards (npy embeddings, tiny text tower):
one batch kind per global step on 2 gloo ranks, resume at shard granularity, corrupt shards counted."""
import json
import os
import shutil

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from clip_fixtures import ddp_worker, free_port, save_tiny_towers, write_shard
from hbfast.cli import main
from hbfast.clip.stream import expand_shards

N_SHARDS, PER_SHARD, WIDTH = 4, 10, 32


def _captions(s, i):
    captions = {"en": f"shape {i} colour {s}"}
    if i % 3 != 1:
        captions["de"] = f"Form {i} Farbe {s}"
    return captions


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    _, text_dir = save_tiny_towers(root)
    rng = np.random.default_rng(0)
    shard_dir = root / "shards"
    shard_dir.mkdir()
    for s in range(N_SHARDS):
        write_shard(shard_dir / f"{s:03d}.tar", [
            {"key": f"{s:03d}{i:03d}", "json": {"captions": _captions(s, i)},
             "npy": rng.standard_normal(WIDTH).astype(np.float16)} for i in range(PER_SHARD)])
    return {"root": root, "text": text_dir, "shards": shard_dir}


def _args(setup, out, *extra, data=None):
    return ["train-clip", "--stream", "--data", data or str(setup["shards"] / "{000..003}.tar"),
            "--text-model", str(setup["text"]), "--languages", "en,de", "--dim", "16", "--max-length", "16",
            "--lr", "1e-3", "--out", str(out), "--no-progress", *extra]


def _plan(out, rank=0):
    return [json.loads(x) for x in (out / f"stream-plan-rank{rank}.jsonl").read_text().splitlines()]


def test_expand_shards_like_webdataset(setup):
    paths = expand_shards(str(setup["shards"] / "{000..003}.tar"))
    assert [os.path.basename(p) for p in paths] == ["000.tar", "001.tar", "002.tar", "003.tar"]
    assert expand_shards(setup["shards"]) == paths
    with pytest.raises(ValueError, match="do not exist"):
        expand_shards(str(setup["shards"] / "{000..004}.tar"))


def test_stream_resumes_at_shard_granularity(setup):
    out = setup["root"] / "resume"
    # buffer = batch: every X-Y step takes the whole buffer, so samples are consumed in shard order
    common = ("--steps", "6", "--save-every", "3", "--batch-size", "4", "--stream-buffer", "4", "--batch-type", "X-Y")
    assert main(_args(setup, out, *common)) == 0
    first = _plan(out)
    assert [r["keys"] for r in first[:3]] == [[f"000{i:03d}" for i in range(4 * k, 4 * k + 4)][:4] if k < 2 else
                                              ["000008", "000009", "001000", "001001"] for k in range(3)]
    state = torch.load(out / "checkpoint-3" / "trainer_state.pt", weights_only=False)["stream"]
    assert state == [{"epoch": 0, "done": [0], "corrupt": 0}]  # shard 0 consumed, shard 1 in progress
    shutil.rmtree(out / "final")
    shutil.rmtree(out / "checkpoint-6")
    assert main(_args(setup, out, *common, "--resume")) == 0
    resumed = _plan(out)
    assert resumed[:3] == first[:3] and [r["step"] for r in resumed] == [1, 2, 3, 4, 5, 6]
    # shard 1 is read again from its start; shard 0 is not read again
    assert resumed[3]["keys"] == ["001000", "001001", "001002", "001003"]
    assert not any(k.startswith("000") for r in resumed[3:] for k in r["keys"])
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6] and all(np.isfinite(r["loss"]) for r in log)


def test_corrupt_shard_is_skipped_and_counted(setup, tmp_path, capsys):
    data = tmp_path / "shards"
    shutil.copytree(setup["shards"], data)
    (data / "002.tar").write_bytes(b"this is not a tar file at all" * 30)
    assert main(_args(setup, tmp_path / "run", "--steps", "9", "--batch-size", "4", "--stream-buffer", "4",
                      "--batch-type", "X-Y", data=str(data))) == 0
    assert "skipped 1 corrupt shard(s)" in capsys.readouterr().out
    keys = [k for r in _plan(tmp_path / "run") for k in r["keys"]]
    assert len(keys) == 36 and not any(k.startswith("002") for k in keys)
    assert keys[30:] == ["000000", "000001", "000002", "000003", "000004", "000005"]  # the second pass
    assert main(_args(setup, tmp_path / "fail", "--steps", "9", "--batch-size", "4", "--stream-buffer", "4",
                      "--on-corrupt", "fail", data=str(data))) == 2
    assert "corrupt shard" in capsys.readouterr().err



def test_two_ranks_plan_the_same_kind_each_step(setup):
    """Sigmoid loss (gathered over ranks) and hybrid batches: every step is one kind and language on both ranks."""
    out = setup["root"] / "ddp"
    argv = _args(setup, out, "--steps", "8", "--batch-size", "8", "--stream-buffer", "8", "--batch-type", "hybrid",
                 "--alpha", "0.5", "--image-text-loss", "sigmoid")
    mp.start_processes(ddp_worker, args=(free_port(), argv), nprocs=2, join=True, start_method="spawn")
    plans = [_plan(out, r) for r in range(2)]
    assert [r["batch"] for r in plans[0]] == [r["batch"] for r in plans[1]]
    kinds = {r["batch"] for r in plans[0]}
    assert "X-Y" in kinds and kinds & {"X-X en", "X-X de"}
    for rank, plan in enumerate(plans):
        for r in plan:
            assert len(r["keys"]) == 4 and all(int(k[:3]) % 2 == rank for k in r["keys"])  # its own shards
            if r["batch"] == "X-X de":
                assert all(int(k[3:]) % 3 != 1 for k in r["keys"])  # every sample has a de caption
    assert (out / "final" / "heads.safetensors").is_file()


def test_unfillable_xx_falls_back_to_xy_and_says_so(setup):
    """A language with too few captions in the buffer and the rest of the pass: the step becomes X-Y."""
    from hbfast.clip.stream import StreamingHybridBatches

    stream = StreamingHybridBatches(str(setup["shards"]), ["en", "fr"], 4, alpha=1.0, seed=0, rank=0, world_size=1,
                                    buffer_size=4, embeddings=True)
    kinds = {}
    for step in range(1, 7):
        samples, kind, fallback = stream.next_batch(step)
        kinds[stream.kind(step)] = (kind, fallback)
        assert len(samples) == 4 and len({s["uid"] for s in samples}) == 4
    assert kinds[("X-X", 0)] == ("X-X en", None)
    assert kinds[("X-X", 1)] == ("X-Y", "X-X fr could not be filled on every rank")
    assert 4 < len(stream.buffer) <= 16  # it read past the buffer looking for fr captions, at most 4x
