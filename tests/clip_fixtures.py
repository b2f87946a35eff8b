"""Shared pieces of the image-text tests: tiny random towers saved as model directories, generated
images, the real XTD captions (../shared/data/xtd10 beside the checkout) and tar shards."""
from __future__ import annotations

import io
import json
import os
import socket
import tarfile
from pathlib import Path

import numpy as np
import pytest

XTD_DIR = Path(os.environ.get("HBFAST_SHARED_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data")) / "xtd10"
needs_xtd = pytest.mark.skipif(not XTD_DIR.is_dir(), reason=f"the real XTD captions are not at {XTD_DIR}")


def save_tiny_towers(directory: Path, seed: int = 0) -> tuple:
    """(image tower dir, text tower dir): a CLIP vision ViT for 32x32 images and a 1-layer BERT with
    the packaged all-MiniLM-L6-v2 tokenizer (multilingual text becomes word pieces)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel, CLIPVisionConfig, CLIPVisionModel

    from hbfast.encoders import packaged_model_path

    torch.manual_seed(seed)
    image_dir, text_dir = directory / "image-tower", directory / "text-tower"
    CLIPVisionModel(CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                                     num_hidden_layers=1, num_attention_heads=2)).save_pretrained(image_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(packaged_model_path()))
    BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                         attention_probs_dropout_prob=0.0)).save_pretrained(text_dir)
    tokenizer.save_pretrained(text_dir)
    return image_dir, text_dir


def colour_image(index: int, size: int = 32):
    """A distinct generated image per index (colour and a bar position from the index)."""
    from PIL import Image

    rng = np.random.default_rng(index)
    pixels = rng.integers(0, 255, size=(size, size, 3), dtype=np.uint8)
    pixels[:, (index % size)] = 255
    return Image.fromarray(pixels)


def png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_xtd_images(image_dir: Path, names) -> None:
    """Generated stand-ins for the COCO images of XTD, under their real file names."""
    image_dir.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        colour_image(i).save(image_dir / name, format="PNG")


def write_shard(path: Path, samples: list, gzip: bool = False) -> None:
    """samples: dicts with "key" and any of "png" (bytes), "json" (dict), "npy" (array)."""
    with tarfile.open(path, "w:gz" if gzip else "w") as tar:
        for sample in samples:
            for extension in ("png", "json", "npy"):
                if extension not in sample:
                    continue
                value = sample[extension]
                if extension == "json":
                    data = json.dumps(value).encode()
                elif extension == "npy":
                    buffer = io.BytesIO()
                    np.save(buffer, value)
                    data = buffer.getvalue()
                else:
                    data = value
                info = tarfile.TarInfo(f"{sample['key']}.{extension}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ddp_worker(rank: int, port: int, argv: list) -> None:
    """One rank of a 2-process gloo run of the hbfast CLI (for torch.multiprocessing.start_processes)."""
    import torch

    from hbfast.cli import main

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank), HF_HUB_OFFLINE="1")
    torch.set_num_threads(1)
    assert main(argv) == 0
