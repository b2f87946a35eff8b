"""Run every family's comparison in one go and print ratios against the baselines.

    python benchmarks/compare.py                # all families (gpu: only where torch sees a GPU)
    python benchmarks/compare.py sampling losses  # some (open_clip: hbfast's open_clip drop-ins)
Each family lives in benchmarks/compare_<family>.py with a main() that checks correctness first.
"""
import importlib
import pathlib
import sys

import torch

HERE = pathlib.Path(__file__).resolve().parent


def main():
    sys.path.insert(0, str(HERE))
    families = sys.argv[1:] or sorted(p.stem[len("compare_"):] for p in HERE.glob("compare_*.py"))
    if not sys.argv[1:] and not torch.cuda.is_available():
        families.remove("gpu")
        print("(gpu: skipped, torch sees no GPU; run benchmarks/compare_gpu.py on a GPU machine)", flush=True)
    for family in families:
        print(f"==== {family} ====", flush=True)
        importlib.import_module(f"compare_{family}").main([])


if __name__ == "__main__":
    main()
