"""hbfast translate's batches by length against batches in input order, on a randomly initialised
Marian model of moderate size (no hub model is reachable here): same texts, same batch size, same
generation settings; prints both times, the ratio and how many translations agree.

A random model decoded greedily ends every text at once or never; here it never does (its
end-of-text token is banned), so every batch decodes max_length steps in both orders: this measures
what sorting saves on the source side (padding in the encoder and in cross-attention), not the
early finish of batches of short translations that sorting also brings with a real model.

    python benchmarks/compare_translate.py [--texts 256] [--batch-size 32] [--max-length 64] [--repeats 3]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def random_marian(root: Path, vocab_size: int = 8000, d_model: int = 256, layers: int = 2) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import GenerationConfig, MarianConfig, MarianMTModel, PreTrainedTokenizerFast

    words = ["</s>", "<unk>", *[f"w{i}" for i in range(vocab_size - 3)], "<pad>"]
    vocab = {w: i for i, w in enumerate(words)}
    pad = vocab["<pad>"]
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 0)])
    tokenizer.decoder = decoders.WordPiece()
    config = MarianConfig(vocab_size=len(words), d_model=d_model, encoder_layers=layers, decoder_layers=layers,
                          encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=4 * d_model,
                          decoder_ffn_dim=4 * d_model, max_position_embeddings=512, pad_token_id=pad, eos_token_id=0,
                          decoder_start_token_id=pad, forced_eos_token_id=0)
    torch.manual_seed(0)
    model = MarianMTModel(config)
    model.final_logits_bias[0, [0, 1, pad]] = -1e4  # never ends early: every translation is max_length tokens
    model.generation_config = GenerationConfig(decoder_start_token_id=pad, eos_token_id=0, pad_token_id=pad,
                                               forced_eos_token_id=0, num_beams=1)
    model.save_pretrained(root)
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                            model_max_length=512).save_pretrained(root)
    return root


def main(argv=None) -> int:
    from hbfast.translate import Translator, model as translate_model

    p = argparse.ArgumentParser()
    p.add_argument("--texts", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(2.8, 0.7, args.texts).astype(int), 3, 200)  # like MS MARCO queries and passages
    texts = [" ".join(f"w{x}" for x in rng.integers(0, 7990, n)) for n in lengths]
    with tempfile.TemporaryDirectory() as tmp:
        translator = Translator(str(random_marian(Path(tmp) / "marian")), device="cpu", batch_size=args.batch_size,
                                max_length=args.max_length, num_beams=1)
        translator.translate(texts[:8], "en", "de")  # warm-up
        by_length = translate_model.length_batches

        def in_order(lengths, size):
            return [list(range(s, min(len(lengths), s + size))) for s in range(0, len(lengths), size)]
        results = {}
        for _ in range(args.repeats):  # interleaved, the best of each: the box is shared
            for name, batches in (("by length", by_length), ("input order", in_order)):
                translate_model.length_batches = batches
                start = time.perf_counter()
                out = translator.translate(texts, "en", "de")
                seconds = time.perf_counter() - start
                results[name] = (out, min(seconds, results.get(name, (None, float("inf")))[1]))
        translate_model.length_batches = by_length
    (a, ta), (b, tb) = results["by length"], results["input order"]
    agree = sum(x == y for x, y in zip(a, b))
    print(f"{args.texts} texts ({lengths.min()}-{lengths.max()} words, median {int(np.median(lengths))}), batch "
          f"{args.batch_size}, max length {args.max_length}, torch threads {torch.get_num_threads()}")
    print(f"best of {args.repeats}: by length {ta:.2f} s ({args.texts / ta:.1f} texts/s); input order {tb:.2f} s ({args.texts / tb:.1f} "
          f"texts/s); ratio {tb / ta:.2f}x; identical translations {agree}/{args.texts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
