"""``hbfast translate``: parallel training data by machine translation.

The hybrid-batch method trains on the same item in several languages; in practice those come from
machine translation (LAION's captions are one language per image, MS MARCO is English). This
package adds translations, made with any transformers translation model of a known family
(:mod:`.codes`), to the long text tables ``hbfast train`` reads, to the caption tables and tar
shards ``hbfast train-clip`` reads, resumably and across torchrun ranks.
"""
from __future__ import annotations

from os import PathLike
from pathlib import Path
from typing import Callable

from .codes import (FAMILIES, LANGUAGES, language_code, language_token, marian_pair, marian_target_token,
                    model_family, parse_languages)
from .model import Translator, length_batches
from .shards import is_shard_source, translate_shards
from .tables import DEFAULT_CHUNK_SIZE, translate_table


def translate(data, out, *, model, to, sources=None, batch_size: int = 32, max_length: int = 256,
              num_beams=None, device=None, chunk_size: int = DEFAULT_CHUNK_SIZE, rank: int = 0, world: int = 1,
              barrier: Callable[[], None] = lambda: None, progress: bool = True) -> dict:
    """Translations of ``data`` (a table file or tar shards) into the languages ``to``, written to
    ``out`` (a table file, or a directory of shards). ``model``: a hub id, a local directory or a
    :class:`Translator`. Returns counts (see :func:`translate_table` / :func:`translate_shards`)."""
    parse_languages(to, "--to")  # before the model is loaded
    if sources is not None:
        parse_languages(sources, "--from")
    shards = is_shard_source(data)
    if not shards and not Path(data).is_file():
        raise FileNotFoundError(f"translate: --data {data} is not a table file nor tar shards")
    translator = Translator(str(model), device=device, batch_size=batch_size, max_length=max_length,
                            num_beams=num_beams) if isinstance(model, (str, PathLike)) else model
    common = {"to": to, "sources": sources, "rank": rank, "world": world, "barrier": barrier, "progress": progress}
    if shards:
        return translate_shards(data, out, translator, **common)
    return translate_table(data, out, translator, chunk_size=chunk_size, **common)


__all__ = ["FAMILIES", "LANGUAGES", "Translator", "is_shard_source", "language_code", "language_token",
           "length_batches", "marian_pair", "marian_target_token", "model_family", "parse_languages", "translate",
           "translate_shards", "translate_table"]
