"""``--image-text-loss sigmoid``: SigLIP's loss with a learnable log-scale and bias in CLIP training.
Tiny random text tower, precomputed image embeddings (no image tower), a few steps."""
import json
import math
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from clip_fixtures import save_tiny_towers
from hbfast import reference
from hbfast.cli import main
from hbfast import SigLIPLoss
from hbfast.clip.model import clip_loss

N_ITEMS, WIDTH = 24, 32
COLOURS = {"en": ["red", "green", "blue", "black"], "de": ["rot", "grün", "blau", "schwarz"]}
SHAPES = {"en": ["circle", "square", "star", "cross", "ring", "line"],
          "de": ["Kreis", "Quadrat", "Stern", "Kreuz", "Ring", "Linie"]}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Captions in en/de built from (colour, shape) of each item; image embeddings that encode the same."""
    root = tmp_path_factory.mktemp("sigmoid")
    _, text_dir = save_tiny_towers(root)
    rng = np.random.default_rng(0)
    colour_codes, shape_codes = rng.standard_normal((4, WIDTH)), rng.standard_normal((6, WIDTH))
    rows, embeddings = [], []
    for i in range(N_ITEMS):
        c, s = i % 4, i % 6
        rows.append({lang: f"{COLOURS[lang][c]} {SHAPES[lang][s]}" for lang in ("en", "de")})
        if i % 3 == 1:
            rows[-1]["de"] = None
        embeddings.append(colour_codes[c] + shape_codes[s])
    table = root / "captions.jsonl"
    table.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    np.save(root / "emb.npy", np.asarray(embeddings, np.float32))
    return {"root": root, "text": text_dir, "table": table, "emb": root / "emb.npy"}


def _args(setup, out, *extra):
    return ["train-clip", "--image-embeddings", str(setup["emb"]), "--text-model", str(setup["text"]),
            "--data", str(setup["table"]), "--languages", "en,de", "--batch-size", "8", "--dim", "16",
            "--max-length", "16", "--out", str(out), "--no-progress", "--image-text-loss", "sigmoid", *extra]


def test_sigmoid_criterion_is_siglip_with_log_scale_and_bias():
    torch.manual_seed(0)
    text = torch.nn.functional.normalize(torch.randn(12, 8, dtype=torch.float64), dim=-1).requires_grad_()
    image = torch.nn.functional.normalize(torch.randn(12, 8, dtype=torch.float64), dim=-1).requires_grad_()
    criterion = SigLIPLoss().double()
    assert math.isclose(criterion.logit_scale.item(), math.log(10), rel_tol=1e-6) and criterion.logit_bias.item() == -10
    with torch.no_grad():
        criterion.logit_scale.fill_(1.5)
        criterion.logit_bias.fill_(-3.0)
    loss = criterion(image, text)  # images against texts, as siglip_loss
    loss.backward()
    t, i = text.detach().clone().requires_grad_(), image.detach().clone().requires_grad_()
    s, b = torch.tensor(1.5, dtype=torch.float64, requires_grad=True), torch.tensor(-3.0, dtype=torch.float64,
                                                                                       requires_grad=True)
    expected = reference.siglip_loss(i, t, s.exp(), b)  # images against texts, the multiplier exp(log-scale)
    expected.backward()
    torch.testing.assert_close(loss, expected)
    for got, want in ((criterion.logit_scale.grad, s.grad), (criterion.logit_bias.grad, b.grad),
                      (text.grad, t.grad), (image.grad, i.grad)):
        assert float(want.abs().max()) > 0
        torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match="logit_bias"):
        clip_loss(text, image, criterion.logit_scale, loss="sigmoid")


def test_train_clip_sigmoid_learns_scale_and_bias(setup):
    out = setup["root"] / "run"
    assert main(_args(setup, out, "--steps", "12", "--lr", "2e-2", "--batch-type", "hybrid", "--alpha", "0.5",
                      "--translation-weight", "0.5", "--save-every", "6")) == 0
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log]
    assert len(losses) == 12 and all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3]), losses
    heads = load_file(str(out / "final" / "heads.safetensors"))
    assert abs(float(heads["logit_scale"]) - math.log(10)) > 1e-3 and abs(float(heads["logit_bias"]) + 10) > 1e-3
    from hbfast.clip import ClipDualEncoder

    model = ClipDualEncoder.load(out / "final")
    assert model.image_text_loss == "sigmoid" and model.logit_bias.item() == heads["logit_bias"].item()
    state = torch.load(out / "checkpoint-6" / "trainer_state.pt", weights_only=False)
    assert set(state["criterion"]) == {"logit_scale", "logit_bias"}
    # a sigmoid run cannot be resumed as a contrastive one
    args = _args(setup, out, "--steps", "14", "--lr", "2e-2", "--resume")
    args[args.index("sigmoid")] = "contrastive"
    assert main(args) == 2


def test_sigmoid_resume_ends_with_the_same_weights(setup):
    out = setup["root"] / "resume"
    common = ("--steps", "6", "--save-every", "3", "--lr", "1e-2", "--batch-type", "X-Y")
    assert main(_args(setup, out, *common)) == 0
    want = {**load_file(str(out / "final" / "heads.safetensors")),
            **load_file(str(out / "final" / "text_tower" / "model.safetensors"))}
    shutil.rmtree(out / "final")
    shutil.rmtree(out / "checkpoint-6")
    assert main(_args(setup, out, *common, "--resume")) == 0
    got = {**load_file(str(out / "final" / "heads.safetensors")),
           **load_file(str(out / "final" / "text_tower" / "model.safetensors"))}
    assert want.keys() == got.keys() and "logit_bias" in got
    for k in want:
        assert torch.equal(want[k], got[k]), k
