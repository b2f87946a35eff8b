"""Multilingual CLIP / LiT training with hybrid batches: image-text dual encoder, image-caption data
(tables and streamed tar shards), the frozen-tower embedding cache, the image-text training task on
``hbfast.train``'s loop, the synthetic demo and the alpha sweep. Heavy imports happen on use."""
from .data import ImageTextData, load_image_text_table
from .model import ClipDualEncoder, build_clip_model, clip_loss

__all__ = ["ClipDualEncoder", "ImageTextData", "build_clip_model", "clip_loss", "load_image_text_table"]
