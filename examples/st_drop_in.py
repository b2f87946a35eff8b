"""hbfast inside SentenceTransformerTrainer: hybrid batches and the fused MultipleNegativesRankingLoss.

    python examples/st_drop_in.py                              # 20 steps on 3 XQuAD-R languages
    python examples/st_drop_in.py --loss sentence-transformers # the same run with sentence-transformers' own loss

Two lines change in an ordinary sentence-transformers training script: the loss class comes from
hbfast.integrations.sentence_transformers, and ``batch_sampler=hybrid_batch_sampler(...)``. The
data here are XQuAD-R's parallel (question, answer sentence) pairs (bundled with hbfast) so that the
example runs offline; XQuAD-R is an evaluation set, so train on your own parallel data for real.
"""
import argparse
import tempfile

from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments

import hbfast
from hbfast.integrations import sentence_transformers as hst


def parallel_pairs(languages, n_items):
    """{lang: [question or None]} and {lang: [answer sentence or None]} over the first n_items question ids."""
    data = hbfast.data.load_lareqa("xquad-r").subset(languages)
    queries, passages, ids = {}, {}, None
    for lang in languages:
        table = data.questions[lang]
        texts = data.candidates[lang]["text"]
        by_id = {qid: (q, texts[r]) for qid, q, r in zip(table["id"], table["question"], table["relevant"])}
        ids = ids or sorted(by_id)[:n_items]
        queries[lang] = [by_id[i][0] if i in by_id else None for i in ids]
        passages[lang] = [by_id[i][1] if i in by_id else None for i in ids]
    return queries, passages


def train(languages=("en", "de", "es"), n_items=200, steps=20, batch_size=16, alpha=0.5, loss="hbfast", seed=0,
          max_seq_length=None):
    """Trains the packaged all-MiniLM-L6-v2 for ``steps`` steps; returns the logged training losses."""
    queries, passages = parallel_pairs(list(languages), n_items)
    dataset, item_ids, pair_languages = hst.hybrid_pairs_dataset(queries, passages, alpha=alpha)
    model = SentenceTransformer(str(hbfast.encoders.packaged_model_path()), device="cpu")
    if max_seq_length:
        model.max_seq_length = max_seq_length
    if loss == "hbfast":
        criterion = hst.MultipleNegativesRankingLoss(model, scale=20.0)
    else:
        from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

        criterion = MultipleNegativesRankingLoss(model, scale=20.0)
    with tempfile.TemporaryDirectory() as out:
        args = SentenceTransformerTrainingArguments(
            output_dir=out, max_steps=steps, per_device_train_batch_size=batch_size, learning_rate=5e-5,
            logging_steps=1, seed=seed, report_to="none", save_strategy="no", use_cpu=True, disable_tqdm=True,
            batch_sampler=hst.hybrid_batch_sampler(item_ids, pair_languages, alpha=alpha),
        )
        trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset, loss=criterion)
        trainer.train()
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--languages", default="en,de,es")
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--loss", choices=["hbfast", "sentence-transformers"], default="hbfast")
    a = parser.parse_args(argv)
    losses = train(a.languages.split(","), a.items, a.steps, a.batch_size, a.alpha, a.loss)
    print("losses:", " ".join(f"{x:.4f}" for x in losses))
    return losses


if __name__ == "__main__":
    main()
