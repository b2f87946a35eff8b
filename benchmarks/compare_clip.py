"""Image-text training speed, measured in one run: LiT from cached image features against
computing the frozen tower's features every step, and the fused loss against naive PyTorch at
CLIP batch sizes.

1. Training images/s of ``ClipTrainer.train_step`` (collate + forward + backward + AdamW step) with a
   frozen image tower: (a) features from the float16 memory-mapped cache, (b) images decoded from
   PNG and run through the frozen tower each step. Towers: the CLIP ViT-B/32 architecture (random
   weights: no download here; the speed does not depend on the weights) and the packaged
   all-MiniLM-L6-v2 text tower; 224 x 224 images, captions from the synthetic task.
2. Forward + backward time and peak extra memory of the symmetric loss at B = 4096 and 32768,
   D = 512, by ``benchmarks/compare_losses.py`` (naive vs hbfast, each in a fresh process). Naive at
   B = 32768 needs several 4 GiB B x B buffers and is only run with ``--naive-32768``.

    python benchmarks/compare_clip.py                        # both parts
    python benchmarks/compare_clip.py --part lit --steps 5 --batch-size 32
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))


def _vit_b32():
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    return CLIPVisionModel(CLIPVisionConfig(image_size=224, patch_size=32, hidden_size=768, intermediate_size=3072,
                                            num_hidden_layers=12, num_attention_heads=12))


def lit_throughput(steps: int, batch_size: int, n_images: int) -> dict:
    from transformers import AutoModel, AutoTokenizer

    from hbfast.clip import cache, synthetic
    from hbfast.clip.model import ClipDualEncoder, ImagePreprocessor
    from hbfast.clip.task import ClipTask, ClipTrainer
    from hbfast.encoders import packaged_model_path
    from hbfast.train.config import TrainConfig

    work = pathlib.Path(tempfile.mkdtemp(prefix="hbfast-bench-clip-"))
    data = synthetic.make_training_data(work, n_images, image_size=224)
    text_dir = str(packaged_model_path())
    model = ClipDualEncoder(AutoModel.from_pretrained(text_dir), AutoTokenizer.from_pretrained(text_dir),
                            image_tower=_vit_b32(), dim=512, freeze_image=True, max_length=32,
                            preprocess=ImagePreprocessor(224, (0.481, 0.458, 0.408), (0.269, 0.261, 0.276)))
    t0 = time.perf_counter()
    features = cache.cached_image_features(model, data, work / "cache", model_name="vit-b32-random", progress=False)
    cache_seconds = time.perf_counter() - t0
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    out = {"cache_build_s": cache_seconds, "cache_images": n_images}
    for mode, feats in (("cached features", features), ("tower every step", None)):
        model.load_state_dict(initial)
        task = ClipTask(data, model, features=feats)
        trainer = ClipTrainer(task, TrainConfig(out=str(work / mode.replace(" ", "-")), batch_size=batch_size,
                                                steps=steps + 1, lr=1e-5, learnable_scale=True, symmetric=True,
                                                progress=False))
        plan = trainer.sampler.plan
        rows = [list(zip(plan.items[i].tolist(), plan.query_lang[i].tolist(), plan.passage_lang[i].tolist()))
                for i in range(min(len(plan), steps + 1))]
        trainer.train_step(rows[0])  # warm-up, not timed
        t0, c0 = time.perf_counter(), time.process_time()
        for r in rows[1:]:
            trainer.train_step(r)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        n = sum(len(r) for r in rows[1:])
        out[mode] = {"images_per_s": n / wall, "cpu_s_per_image": cpu / n, "steps": len(rows) - 1}
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", default="all", choices=("all", "lit", "loss"))
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--images", type=int, default=256, help="images in the LiT cache")
    ap.add_argument("--naive-32768", action="store_true", help="also run naive at B = 32768 (needs ~16 GiB)")
    args = ap.parse_args(argv)
    print(f"torch threads={torch.get_num_threads()}")
    if args.part in ("all", "lit"):
        r = lit_throughput(args.steps, args.batch_size, args.images)
        print(f"\nLiT training, frozen ViT-B/32 (224 px) + all-MiniLM-L6-v2 text tower, batch {args.batch_size}, "
              f"{args.steps} timed steps (after 1 warm-up)")
        print(f"cache build: {r['cache_images']} images in {r['cache_build_s']:.1f} s (once per data set and tower)")
        base = r["tower every step"]
        for mode in ("tower every step", "cached features"):
            m = r[mode]
            print(f"{mode:18s} {m['images_per_s']:8.2f} images/s  {m['cpu_s_per_image'] * 1000:8.1f} CPU ms/image  "
                  f"speedup {m['images_per_s'] / base['images_per_s']:6.2f}x "
                  f"(CPU {base['cpu_s_per_image'] / m['cpu_s_per_image']:.2f}x)")
    if args.part in ("all", "loss"):
        import compare_losses

        compare_losses.main(["--sizes", "4096x512", "--impls", "naive,hbfast", "--skip-check"])
        compare_losses.main(["--sizes", "32768x512", "--impls", "naive,hbfast" if args.naive_32768 else "hbfast",
                             "--repeats", "1", "--skip-check"])
        if not args.naive_32768:
            print("naive at B=32768: not run (pass --naive-32768; its B x B logits alone take 4 GiB)")


if __name__ == "__main__":
    main()
