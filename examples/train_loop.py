"""Hybrid batch training in a plain PyTorch loop: HybridBatchSampler + a transformers encoder + hbfast.contrastive_loss.

    python examples/train_loop.py --model path/to/encoder --data mlqa-r --steps 100
(`hbfast train` adds checkpoints, resume, held-out early stopping, the cached mode and torchrun.)
"""
import argparse

import torch
from torch.utils.data import DataLoader
from transformers import AutoModel, AutoTokenizer

import hbfast
from hbfast.data.pairs import load_pairs

parser = argparse.ArgumentParser()
parser.add_argument("--model", default=None, help="transformers encoder (default: packaged all-MiniLM-L6-v2)")
parser.add_argument("--data", default="mlqa-r", help="mlqa-r, xquad-r or a long-format id/language/query/passage file")
parser.add_argument("--steps", type=int, default=100)
parser.add_argument("--batch-size", type=int, default=32)
parser.add_argument("--alpha", type=float, default=0.5)
parser.add_argument("--out", default="train-loop-model")
args = parser.parse_args()

model_path = args.model or str(hbfast.encoders.packaged_model_path())
tokenizer, encoder = AutoTokenizer.from_pretrained(model_path), AutoModel.from_pretrained(model_path)
pairs = load_pairs(args.data)  # queries[lang][item], passages[lang][item], availability [items, langs]


class Rows(torch.utils.data.Dataset):
    def __getitem__(self, row):  # the sampler yields (item, query_lang, passage_lang) rows
        return row


def collate(rows):  # rows: [(item, query_lang, passage_lang)] from the sampler
    queries = [pairs.queries[pairs.languages[ql]][i] for i, ql, _ in rows]
    passages = [pairs.passages[pairs.languages[pl]][i] for i, _, pl in rows]
    def tok(texts):
        return tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    return tok(queries), tok(passages)


def embed(batch):  # mean pooling over real tokens
    hidden = encoder(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return (hidden * mask).sum(1) / mask.sum(1)


sampler = hbfast.HybridBatchSampler(pairs.availability, args.batch_size, alpha=args.alpha, seed=0)
loader = DataLoader(Rows(), batch_sampler=sampler, collate_fn=collate)
optimizer = torch.optim.AdamW(encoder.parameters(), lr=3e-5, weight_decay=0.01)
encoder.train()
step, epoch = 0, 0
while step < args.steps:
    sampler.set_epoch(epoch)
    for queries, passages in loader:
        loss = hbfast.contrastive_loss(embed(queries), embed(passages), temperature=0.05, normalize=True)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        step += 1
        print(f"step {step} loss {loss.item():.4f}")
        if step == args.steps:
            break
    epoch += 1
encoder.save_pretrained(args.out)
tokenizer.save_pretrained(args.out)
