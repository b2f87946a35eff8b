"""``hbfast train-clip`` end to end on tiny random towers, generated images and the real XTD captions:
the LiT cache, XTD evaluation of checkpoints, exact resume, 2-process gloo DDP, the sweep's checks
(the demo and the synthetic sweep: test_clip_study.py)."""
import json

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from clip_fixtures import XTD_DIR, ddp_worker, free_port, needs_xtd, save_tiny_towers, write_xtd_images
from hbfast.cli import main

pytestmark = needs_xtd
LANGUAGES = ["en", "de", "ja"]  # XTD's jp file is "jp": mapped below
N_TRAIN = 48


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Tiny towers; a wide caption table of the first XTD images (en, de, jp captions, some removed so
    that availability varies) with generated images; the XTD image directory for evaluation."""
    from hbfast.data.xtd import read_xtd_dir

    root = tmp_path_factory.mktemp("clip")
    image_dir, text_dir = save_tiny_towers(root)
    columns = read_xtd_dir(XTD_DIR, ["en", "de", "jp"])
    xtd_images = root / "coco"
    write_xtd_images(xtd_images, columns["image"])
    rows = []
    for i in range(N_TRAIN):
        row = {"image": str(xtd_images / columns["image"][i]), "en": columns["en"][i], "de": columns["de"][i],
               "jp": columns["jp"][i]}
        if i % 3 == 1:
            row["de"] = None
        if i % 4 == 2:
            row["jp"] = ""
        rows.append(row)
    table = root / "captions.jsonl"
    table.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return {"root": root, "image": image_dir, "text": text_dir, "table": table, "xtd_images": xtd_images}


def _args(setup, out, *extra):
    return ["train-clip", "--image-model", str(setup["image"]), "--text-model", str(setup["text"]),
            "--data", str(setup["table"]), "--languages", "en,de,jp", "--batch-size", "8", "--dim", "16",
            "--max-length", "32", "--lr", "1e-3", "--out", str(out), "--no-progress", *extra]


def _weights(directory):
    out = {}
    for name in ("heads.safetensors", "text_tower/model.safetensors"):
        out.update({f"{name}:{k}": v for k, v in load_file(str(directory / name)).items()})
    return out


def test_train_clip_end_to_end_with_xtd_evaluation(setup):
    out = setup["root"] / "run"
    assert main(_args(setup, out, "--steps", "3", "--save-every", "2", "--batch-type", "hybrid", "--alpha", "0.5",
                      "--translation-weight", "0.5", "--xtd-images", str(setup["xtd_images"]),
                      "--xtd-data", str(XTD_DIR), "--xtd-languages", "en,de")) == 0
    assert (out / "final" / "heads.safetensors").is_file() and (out / "checkpoint-2").is_dir()
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in log)
    evaluations = [json.loads(x) for x in (out / "xtd.jsonl").read_text().splitlines()]
    assert [e["at"] for e in evaluations] == ["checkpoint-2", "final"]
    for e in evaluations:
        assert set(e["per_language"]) == {"en", "de"} and 0 <= e["t2i_r1"] <= 1 and 0 <= e["map"] <= 1
    index = json.loads((out / "image-cache" / "index.json").read_text())
    assert index["rows"] == N_TRAIN and index["dim"] == 32 and index["dtype"] == "float16"
    from hbfast.clip import ClipDualEncoder

    model = ClipDualEncoder.load(out / "final")
    first = _weights(out / "final")
    assert model.image_tower is not None and model.dim == 16
    # the final model is what training produced: changed from the untrained projection heads
    untrained = ClipDualEncoder.load(out / "checkpoint-2")
    assert not torch.equal(model.text_projection.weight, untrained.text_projection.weight)
    assert first  # loaded from the saved files


def test_resume_ends_with_the_same_weights(setup):
    out = setup["root"] / "resume"
    common = ("--steps", "6", "--save-every", "3", "--batch-type", "X-Y", "--translation-weight", "1")
    assert main(_args(setup, out, *common)) == 0
    reference = _weights(out / "final")
    import shutil

    shutil.rmtree(out / "final")
    shutil.rmtree(out / "checkpoint-6")
    assert main(_args(setup, out, *common, "--resume")) == 0
    resumed = _weights(out / "final")
    assert reference.keys() == resumed.keys()
    for k in reference:
        assert torch.equal(reference[k], resumed[k]), k
    assert main(_args(setup, setup["root"] / "never", "--steps", "2", "--resume")) == 2  # nothing to resume



def test_two_process_ddp_matches_one_process(setup):
    one, two = setup["root"] / "one", setup["root"] / "two"
    common = ("--steps", "3", "--batch-type", "hybrid", "--alpha", "0.5", "--cache-dir",
              str(setup["root"] / "shared-cache"), "--no-bf16")  # a float32 equality (bf16 rounds per layout)
    assert main(_args(setup, one, *common)) == 0
    mp.start_processes(ddp_worker, args=(free_port(), _args(setup, two, *common)), nprocs=2, join=True,
                       start_method="spawn")
    a, b = _weights(one / "final"), _weights(two / "final")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)


def test_bad_inputs_are_named(setup, tmp_path, capsys):
    assert main(_args(setup, tmp_path / "a", "--steps", "1", "--languages", "ko,pl")) == 2
    assert "none of the requested languages ['ko', 'pl']" in capsys.readouterr().err
    np.save(tmp_path / "emb.npy", np.zeros((N_TRAIN - 1, 32), np.float32))
    assert main(_args(setup, tmp_path / "b", "--steps", "1", "--image-embeddings", str(tmp_path / "emb.npy"))) == 2
    assert f"{N_TRAIN - 1} image embeddings for {N_TRAIN} captioned images" in capsys.readouterr().err
    np.save(tmp_path / "emb.npy", np.zeros((N_TRAIN, 24), np.float32))
    assert main(_args(setup, tmp_path / "c", "--steps", "1", "--image-embeddings", str(tmp_path / "emb.npy"))) == 2
    assert "image features of dimension 24" in capsys.readouterr().err
    assert main(_args(setup, tmp_path / "d", "--steps", "1", "--batch-size", "4096")) == 2


def test_precomputed_embeddings_train_without_image_decoding(setup, tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "img_emb_0.npy", rng.standard_normal((N_TRAIN, 32)).astype(np.float16))
    assert main(_args(setup, tmp_path / "e", "--steps", "2", "--image-embeddings", str(tmp_path / "img_emb_0.npy"),
                      "--batch-type", "X-X")) == 0
    assert not (tmp_path / "e" / "image-cache").exists()


def test_clip_sweep_checks_its_arguments(setup, tmp_path, capsys):
    assert main(["sweep", "--task", "clip", "--alpha", "0,1.5", "--data", "synthetic", "--out", str(tmp_path)]) == 2
    assert "distinct values in [0, 1], got '0,1.5' (outside [0, 1]: [1.5])" in capsys.readouterr().err
    assert main(["sweep", "--task", "clip", "--alpha", "0,1,0", "--data", "synthetic", "--out", str(tmp_path)]) == 2
    assert "(repeated: [0.0])" in capsys.readouterr().err  # once the second run overwrote the first
    assert main(["sweep", "--task", "clip", "--alpha", "0,1", "--data", str(setup["table"]),
                 "--text-model", str(setup["text"]), "--out", str(tmp_path)]) == 2
    assert "needs --xtd-images" in capsys.readouterr().err


def test_cached_embedding_mode_matches_the_plain_step(setup, tmp_path):
    """--mini-batch splits both sides (captions and pixels) and gives the plain step's weights."""
    common = ("--steps", "2", "--batch-type", "X-Y", "--unfreeze-image", "--no-bf16")  # float32 equality
    assert main(_args(setup, tmp_path / "plain", *common)) == 0
    assert main(_args(setup, tmp_path / "cached", *common, "--mini-batch", "3")) == 0
    a, b = _weights(tmp_path / "plain" / "final"), _weights(tmp_path / "cached" / "final")
    a.update({f"image:{k}": v for k, v in load_file(str(tmp_path / "plain/final/image_tower/model.safetensors")).items()})
    b.update({f"image:{k}": v for k, v in load_file(str(tmp_path / "cached/final/image_tower/model.safetensors")).items()})
    for k in a:
        if k.endswith(("k_proj.bias", "key.bias")):
            # a key bias shifts a whole softmax row: its true gradient is 0, and Adam turns the
            # rounding noise left in it into lr-sized steps, different for any change of summation order
            continue
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
