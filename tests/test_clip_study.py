"""The offline CLIP study at a tiny internal setting: ``hbfast demo --clip`` and ``hbfast sweep --task
clip`` write the results schema (per-seed values, mean, spread, held-out languages apart), the
frozen image tower is trained once and reused from the cache, and every batch type learns."""
import json

import numpy as np
import pytest
import torch

from hbfast.cli import main
from hbfast.clip import image_tower, study, synthetic

# Seconds, not minutes: a 1-layer tower on 480 images, 24 test scenes, 2 seeds of 10 steps of 16.
TINY = {"images": 96, "steps": 10, "batch_size": 16, "lr": 5e-4, "dim": 32, "max_length": 24, "frozen_layers": 4,
        "seeds": 2, "test_scenes": 24,
        "tower": {"images": 480, "epochs": 4, "width": 32, "layers": 1, "batch_size": 32, "lr": 3e-3}}
LANGUAGES = set(synthetic.LANGUAGES)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("clip-study")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HBFAST_CACHE", str(root / "cache"))
        mp.setattr(study, "QUICK", TINY)
        assert main(["demo", "--clip", "--quick", "--out", str(root / "demo"), "--no-progress"]) == 0
    return root, json.loads((root / "demo" / "results.json").read_text())


def test_demo_results_have_per_seed_values_spread_and_held_out_languages(demo):
    root, results = demo
    assert results["chance"] == pytest.approx(1 / 24) and results["data"]["test_images"] == 24
    assert set(results["runs"]) == {"untrained", "X-X", "X-Y", "hybrid"}
    assert results["data"]["held_out_languages"] == ["pt", "sv"]
    assert results["seconds"] > 0 and results["cpu_seconds"] > 0 and len(results["load_avg"]["end"]) == 3
    for name, run in results["runs"].items():
        assert run["seeds"] == [0, 1]
        for m in study.METRICS:
            values = run["per_seed"][m]
            assert len(values) == 2 and all(0 <= v <= 1 for v in values)
            assert run[m] == pytest.approx(np.mean(values))
            assert run["std"][m] == pytest.approx(np.std(values, ddof=1))
            assert run["min"][m] == min(values) and run["max"][m] == max(values)
        assert set(run["per_language"]) == LANGUAGES
        assert run["t2i_r1"] == pytest.approx(np.mean([v["t2i_r1"] for v in run["per_language"].values()]))
        for seed in range(2):  # the groups are the per-seed means over their languages
            held = np.mean([run["per_language"][x]["per_seed"]["t2i_r1"][seed] for x in ("pt", "sv")])
            assert run["held_out"]["t2i_r1"]["per_seed"][seed] == pytest.approx(held)
            train = np.mean([run["per_language"][x]["per_seed"]["map"][seed] for x in LANGUAGES - {"pt", "sv"}])
            assert run["train_languages"]["map"]["per_seed"][seed] == pytest.approx(train)
        assert {"mean", "std", "min", "max", "per_seed"} <= set(run["held_out"]["i2t_r10"])
    assert results["runs"]["hybrid"]["settings"]["alpha"] == 0.5 and results["runs"]["X-X"]["settings"]["alpha"] == 1.0
    assert (root / "demo" / "results.png").stat().st_size > 1000
    assert not (root / "demo" / "runs" / "X-X-seed0" / "final").exists()  # no MiniLM copy per run left behind


def test_every_batch_type_learns_above_the_untrained_model(demo):
    runs = demo[1]["runs"]
    untrained = runs["untrained"]["train_languages"]["t2i_r1"]["max"]
    for name in ("X-X", "X-Y", "hybrid"):
        trained = runs[name]["train_languages"]["t2i_r1"]
        assert trained["min"] > untrained, (name, trained, untrained)


def test_the_frozen_image_tower_is_trained_once_and_reused(demo, monkeypatch):
    root, results = demo
    info = results["data"]["image_tower"]
    assert info["cached"] is False and 0 <= info["accuracy"]["scene"] <= 1
    monkeypatch.setenv("HBFAST_CACHE", str(root / "cache"))
    tower, again = image_tower.load_or_train(TINY["tower"], progress=False)
    assert again["cached"] is True and again["key"] == info["key"] and again["path"] == info["path"]
    assert not any(p.requires_grad for p in tower.parameters())
    other = image_tower.settings_key({**image_tower.DEFAULT, **TINY["tower"], "seed": 7})
    assert other != info["key"]  # other settings: another cache entry
    # the cached tower is the one the demo trained on: it gives the demo's cached training-image features
    from PIL import Image

    from hbfast.clip.cache import open_cache
    from hbfast.clip.model import ImagePreprocessor

    images = [Image.open(root / "demo" / "synthetic" / "train" / f"{i:06d}.png") for i in range(4)]
    with torch.no_grad():
        features = tower(pixel_values=ImagePreprocessor(32)(images)).pooler_output.numpy()
    np.testing.assert_allclose(open_cache(root / "demo" / "image-cache")[np.arange(4)], features, rtol=2e-3, atol=2e-3)


def test_clip_sweep_runs_the_offline_study_over_seeds(demo, tmp_path, monkeypatch):
    monkeypatch.setenv("HBFAST_CACHE", str(demo[0] / "cache"))  # the demo's tower, from the cache
    monkeypatch.setattr(study, "DEFAULT", {**TINY, "images": 48, "steps": 2, "test_scenes": 12})
    assert main(["sweep", "--task", "clip", "--alpha", "0,1", "--seeds", "2", "--out", str(tmp_path / "sweep"),
                 "--no-progress"]) == 0
    result = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert result["alphas"] == [0.0, 1.0] and set(result["runs"]) == {"0.0", "1.0"} and result["chance"] == 1 / 12
    assert result["data"]["image_tower"]["cached"] is True
    for a, run in result["runs"].items():
        assert run["settings"]["alpha"] == float(a) and run["settings"]["steps"] == 2 and run["seeds"] == [0, 1]
        assert len(run["per_seed"]["map"]) == 2 and "std" in run["held_out"]["t2i_r1"]
    assert (tmp_path / "sweep" / "sweep.png").stat().st_size > 1000
    assert main(["sweep", "--task", "clip", "--alpha", "0", "--seeds", "0", "--out", str(tmp_path / "x")]) == 2
