"""A small demonstration of hybrid batch plans on a synthetic parallel corpus (python -m hbfast.sampling_demo)."""
import numpy as np

import hbfast


def main():
    languages = ["ar", "de", "en", "es", "hi", "vi", "zh"]
    availability = np.random.default_rng(0).random((100_000, len(languages))) < 0.6
    plan = hbfast.hybrid_batches(availability, 100, alpha=0.5, seed=0)
    print(hbfast.build_info())
    print(f"{len(plan)} batches of 100, {plan.mono.mean():.1%} monolingual (alpha=0.5)")
    for b in range(3):
        kind = "X-X" if plan.mono[b] else "X-Y"
        pairs = [f"{plan.items[b, r]}:{languages[plan.query_lang[b, r]]}->{languages[plan.passage_lang[b, r]]}" for r in range(4)]
        print(f"batch {b} {kind}: {' '.join(pairs)} ...")


if __name__ == "__main__":
    main()
