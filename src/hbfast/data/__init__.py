"""Evaluation data: LAReQA-format (XQuAD-R, MLQA-R), BEIR-style and XTD loaders, plus the bundled compact LAReQA copies."""
from .beir import BEIRDataset, load_beir
from .lareqa import LAReQADataset, download_lareqa, load_lareqa, read_lareqa_json
from .xtd import XTDDataset, download_xtd, load_xtd

__all__ = [
    "BEIRDataset",
    "LAReQADataset",
    "XTDDataset",
    "download_lareqa",
    "download_xtd",
    "load_beir",
    "load_lareqa",
    "load_xtd",
    "read_lareqa_json",
]
