"""Derive the compact evaluation data bundled in hbfast (src/hbfast/data/bundled/) from the original files.

Usage: python scripts/make_bundled_data.py [--source DIR]   (default: $HBFAST_SHARED_DATA, else
shared/data beside the checkout, i.e. ../shared/data from the repository root)

Every LAReQA file is parsed and checked by hbfast's own loader, so the bundle holds exactly what
the protocol reads: per paragraph its sentences, question ids, questions and answer-sentence
indices (zstd parquet). License and attribution files are copied next to the bundles. XTD is not
bundled (its captions are for noncommercial research only): hbfast downloads it on demand.
"""
import argparse
import os
import shutil
from pathlib import Path

from hbfast.data.lareqa import BUNDLED_DIR, LANGUAGES, read_lareqa_json, write_bundle

ATTRIBUTION = """\
# Data bundled with hbfast

Compact copies derived by scripts/make_bundled_data.py from the public files below; only the fields
the evaluation protocols read are kept (paragraph sentences, question ids and texts, the index of
the sentence holding each answer). Their licenses are those of their authors, not hbfast's
Apache-2.0.

| file | data | source | license |
|---|---|---|---|
| xquad-r.parquet | XQuAD-R, 11 languages | google-research-datasets/lareqa (LAReQA, Roy et al. 2020, arXiv 2004.05484), built on XQuAD (Artetxe et al. 2020, google-deepmind/xquad) | CC BY-SA 4.0, LICENSE-xquad-r |
| mlqa-r.parquet | MLQA-R (dev), 7 languages | google-research-datasets/lareqa (history), built on MLQA (Lewis et al. 2020, facebookresearch/MLQA) | CC BY-SA 3.0, LICENSE-mlqa-r |

The derived parquet files are adaptations of these works and are shared under the same licenses.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_source = os.environ.get("HBFAST_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data"
    parser.add_argument("--source", default=default_source, type=Path)
    parser.add_argument("--out", default=BUNDLED_DIR, type=Path)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, languages in LANGUAGES.items():
        by_language = {lang: read_lareqa_json(args.source / name / f"{lang}.json") for lang in languages}
        write_bundle(by_language, args.out / f"{name}.parquet")
        shutil.copyfile(args.source / name / "LICENSE", args.out / f"LICENSE-{name}")
    (args.out / "ATTRIBUTION.md").write_text(ATTRIBUTION)
    for path in sorted(args.out.iterdir()):
        print(f"{path.stat().st_size:>10,d}  {path}")


if __name__ == "__main__":
    main()
