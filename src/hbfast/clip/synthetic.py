"""A small synthetic multilingual image-caption task for the offline CLIP study (``demo --clip``).

Exists because no real image-caption training data or image weights can be fetched offline: images
of one shape (4) in one colour (6), one size (2) at one position (5) -- 240 scenes -- are drawn
with PIL (jittered placement, size and shade, background noise), and each scene is captioned from a
fixed vocabulary in 8 languages whose words differ (and split into different word pieces for an
English-pretrained tokenizer), so that aligning the languages is a real problem for the text tower.
It is synthetic: it lets batch types be compared; it says nothing about real images.
"""
from __future__ import annotations

import itertools
import shutil
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

SHAPES = ("circle", "square", "triangle", "diamond")
COLOURS = {"red": (220, 30, 30), "green": (30, 170, 50), "blue": (40, 70, 220), "yellow": (235, 210, 30),
           "purple": (140, 40, 170), "orange": (245, 135, 20)}
SIZES = ("small", "large")
POSITIONS = ("top left", "top right", "bottom left", "bottom right", "centre")

# One word (or phrase) per concept and language; captions read "<size> <colour> <shape> <position>".
VOCABULARY = {
    "en": {"circle": "circle", "square": "square", "triangle": "triangle", "diamond": "diamond",
           "red": "red", "green": "green", "blue": "blue", "yellow": "yellow", "purple": "purple", "orange": "orange",
           "small": "a small", "large": "a large", "top left": "at the top left", "top right": "at the top right",
           "bottom left": "at the bottom left", "bottom right": "at the bottom right", "centre": "in the centre"},
    "de": {"circle": "Kreis", "square": "Quadrat", "triangle": "Dreieck", "diamond": "Raute",
           "red": "roter", "green": "grüner", "blue": "blauer", "yellow": "gelber", "purple": "violetter",
           "orange": "oranger", "small": "ein kleiner", "large": "ein großer", "top left": "oben links",
           "top right": "oben rechts", "bottom left": "unten links", "bottom right": "unten rechts",
           "centre": "in der Mitte"},
    "fr": {"circle": "cercle", "square": "carré", "triangle": "triangle", "diamond": "losange",
           "red": "rouge", "green": "vert", "blue": "bleu", "yellow": "jaune", "purple": "violet", "orange": "orange",
           "small": "un petit", "large": "un grand", "top left": "en haut à gauche", "top right": "en haut à droite",
           "bottom left": "en bas à gauche", "bottom right": "en bas à droite", "centre": "au centre"},
    "es": {"circle": "círculo", "square": "cuadrado", "triangle": "triángulo", "diamond": "rombo",
           "red": "rojo", "green": "verde", "blue": "azul", "yellow": "amarillo", "purple": "morado",
           "orange": "naranja", "small": "un pequeño", "large": "un gran", "top left": "arriba a la izquierda",
           "top right": "arriba a la derecha", "bottom left": "abajo a la izquierda",
           "bottom right": "abajo a la derecha", "centre": "en el centro"},
    "it": {"circle": "cerchio", "square": "quadrato", "triangle": "triangolo", "diamond": "rombo",
           "red": "rosso", "green": "verde", "blue": "blu", "yellow": "giallo", "purple": "viola",
           "orange": "arancione", "small": "un piccolo", "large": "un grande", "top left": "in alto a sinistra",
           "top right": "in alto a destra", "bottom left": "in basso a sinistra", "bottom right": "in basso a destra",
           "centre": "al centro"},
    "nl": {"circle": "cirkel", "square": "vierkant", "triangle": "driehoek", "diamond": "ruit",
           "red": "rode", "green": "groene", "blue": "blauwe", "yellow": "gele", "purple": "paarse",
           "orange": "oranje", "small": "een kleine", "large": "een grote", "top left": "linksboven",
           "top right": "rechtsboven", "bottom left": "linksonder", "bottom right": "rechtsonder",
           "centre": "in het midden"},
    "pt": {"circle": "círculo", "square": "quadrado", "triangle": "triângulo", "diamond": "losango",
           "red": "vermelho", "green": "verde", "blue": "azul", "yellow": "amarelo", "purple": "roxo",
           "orange": "laranja", "small": "um pequeno", "large": "um grande", "top left": "em cima à esquerda",
           "top right": "em cima à direita", "bottom left": "em baixo à esquerda",
           "bottom right": "em baixo à direita", "centre": "no centro"},
    "sv": {"circle": "cirkel", "square": "kvadrat", "triangle": "triangel", "diamond": "romb",
           "red": "röd", "green": "grön", "blue": "blå", "yellow": "gul", "purple": "lila", "orange": "orange",
           "small": "en liten", "large": "en stor", "top left": "uppe till vänster", "top right": "uppe till höger",
           "bottom left": "nere till vänster", "bottom right": "nere till höger", "centre": "i mitten"},
}
LANGUAGES = tuple(VOCABULARY)
HELD_OUT = ("pt", "sv")  # never captioned in training: only their shared subwords can transfer
SCENES = tuple(itertools.product(SHAPES, COLOURS, SIZES, POSITIONS))  # 240


def caption(scene: tuple, lang: str) -> str:
    shape, colour, size, position = scene
    words = VOCABULARY[lang]
    if lang in ("en", "de", "nl", "sv"):  # adjective before the noun
        return f"{words[size]} {words[colour]} {words[shape]} {words[position]}"
    return f"{words[size]} {words[shape]} {words[colour]} {words[position]}"


def draw(scene: tuple, rng: np.random.Generator, image_size: int = 32):
    """One jittered PIL image of ``scene``."""
    from PIL import Image, ImageDraw

    shape, colour, size, position = scene
    background = rng.integers(0, 60, size=(image_size, image_size, 3), dtype=np.uint8)
    image = Image.fromarray(background + np.uint8(rng.integers(100, 140)))
    radius = image_size * (0.17 if size == "small" else 0.3) * rng.uniform(0.85, 1.15)
    centres = {"top left": (0.27, 0.27), "top right": (0.73, 0.27), "bottom left": (0.27, 0.73),
               "bottom right": (0.73, 0.73), "centre": (0.5, 0.5)}
    cx, cy = (np.array(centres[position]) + rng.uniform(-0.05, 0.05, 2)) * image_size
    shade = np.clip(np.array(COLOURS[colour]) + rng.integers(-25, 26, 3), 0, 255)
    fill = tuple(int(v) for v in shade)
    pen = ImageDraw.Draw(image)
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    if shape == "circle":
        pen.ellipse(box, fill=fill)
    elif shape == "square":
        pen.rectangle(box, fill=fill)
    elif shape == "triangle":
        pen.polygon([(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)], fill=fill)
    else:
        pen.polygon([(cx, cy - radius), (cx + radius, cy), (cx, cy + radius), (cx - radius, cy)], fill=fill)
    return image


def make_training_data(directory: str | Path, n_images: int = 2000, *, languages: Sequence[str] = None,
                       caption_probability: float = 0.6, seed: int = 0, image_size: int = 32):
    """Random scenes drawn to ``directory/train/``, each captioned in a random non-empty subset of
    ``languages`` (default: all but the held-out ones); returns :class:`~hbfast.clip.data.ImageTextData`."""
    from .data import ImageTextData

    languages = tuple(languages or [x for x in LANGUAGES if x not in HELD_OUT])
    rng = np.random.default_rng(seed)
    folder = Path(directory) / "train"
    folder.mkdir(parents=True, exist_ok=True)
    captions = {lang: [] for lang in languages}
    images = []
    for i in range(n_images):
        scene = SCENES[rng.integers(len(SCENES))]
        path = folder / f"{i:06d}.png"
        draw(scene, rng, image_size).save(path)
        images.append({"bytes": None, "path": str(path)})
        keep = rng.random(len(languages)) < caption_probability
        keep[rng.integers(len(languages))] = True
        for lang, k in zip(languages, keep):
            captions[lang].append(caption(scene, lang) if k else None)
    return ImageTextData(languages, captions, images, None, f"synthetic train ({n_images} images)")


class SyntheticXTD:
    """The evaluation set in :func:`hbfast.eval.evaluate_xtd`'s shape: every scene once (fresh jitter),
    or the first ``n_scenes`` of a fixed shuffle of them (small test runs), one caption per scene and
    language, images written to ``directory/test/``."""

    def __init__(self, directory: str | Path, *, languages: Optional[Sequence[str]] = None, seed: int = 12345,
                 image_size: int = 32, n_scenes: Optional[int] = None):
        import datasets

        self.languages = tuple(languages or LANGUAGES)
        rng = np.random.default_rng(seed)
        self.scenes = SCENES if n_scenes is None else tuple(
            SCENES[i] for i in sorted(np.random.default_rng(0).permutation(len(SCENES))[:int(n_scenes)]))
        self.image_dir = Path(directory) / "test"
        shutil.rmtree(self.image_dir, ignore_errors=True)
        self.image_dir.mkdir(parents=True)
        names = []
        for i, scene in enumerate(self.scenes):
            names.append(f"{i:04d}.png")
            draw(scene, rng, image_size).save(self.image_dir / names[-1])
        self.captions = datasets.Dataset.from_dict(
            {"image": names, **{lang: [caption(s, lang) for s in self.scenes] for lang in self.languages}})

    def image_paths(self) -> list:
        return [self.image_dir / name for name in self.captions["image"]]


def tiny_clip_model(text_model: str | Path, *, image_size: int = 32, width: int = 64, dim: int = 64,
                    layers: int = 2, seed: int = 0, freeze_image: bool = False, max_length: int = 32):
    """Randomly initialised small towers: a ViT (CLIP vision config) and a BERT encoder using
    ``text_model``'s tokenizer (any transformers tokenizer directory)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel, CLIPVisionConfig, CLIPVisionModel

    from .model import ClipDualEncoder, ImagePreprocessor

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(str(text_model))
    text = BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=width, num_hidden_layers=layers,
                                num_attention_heads=4, intermediate_size=2 * width, max_position_embeddings=64,
                                hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    image = CLIPVisionModel(CLIPVisionConfig(image_size=image_size, patch_size=max(4, image_size // 8),
                                             hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers,
                                             num_attention_heads=4))
    return ClipDualEncoder(text, tokenizer, image_tower=image, dim=dim, freeze_image=freeze_image,
                           max_length=max_length, preprocess=ImagePreprocessor(image_size))
