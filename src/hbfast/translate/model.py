"""A transformers translation model behind one call: ``Translator.translate(texts, source, target)``.

Exists to keep the model side of ``hbfast translate`` (loading quietly, the family's language
codes, batches of similar length, generation under ``torch.inference_mode``) apart from the data
formats. The model's weights are loaded on the first call, so a rerun with nothing left to do does
not load them. Any object with ``fingerprint``, ``check``, ``default_sources``, ``truncated`` and
``translate`` can stand in for a :class:`Translator` (the data functions only use those, and
``load`` where there is one).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from typing import Callable

from . import codes


@contextlib.contextmanager
def quiet_transformers():
    """transformers' log at error level and its progress bars off (restored on exit): one bar, hbfast's."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def length_batches(lengths: Sequence[int], batch_size: int) -> list:
    """Indices grouped into batches of at most ``batch_size`` texts of similar length, longest first
    (so that running out of memory happens at once); ties keep their order."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]


class Translator:
    """``model``: a hub id or local directory of a Marian, NLLB, M2M100, mBART-50 or madlad400 model.

    ``max_length`` caps both the source tokens (longer texts are truncated, counted in ``truncated``)
    and the generated ones; ``num_beams`` None keeps the model's generation config.
    """

    def __init__(self, model: str, *, device: str | None = None, batch_size: int = 32, max_length: int = 256,
                 num_beams: int | None = None):
        from transformers import AutoConfig, AutoTokenizer

        for name, value in (("batch_size", batch_size), ("max_length", max_length), ("num_beams", num_beams)):
            if name == "num_beams" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        with quiet_transformers():
            self.config = AutoConfig.from_pretrained(model)
            self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.name = str(model)
        self.vocab = set(self.tokenizer.get_vocab())
        self.family = codes.model_family(self.config.model_type, type(self.tokenizer).__name__, self.vocab)
        self.device, self.batch_size, self.max_length, self.num_beams = device, batch_size, max_length, num_beams
        self.model, self.truncated = None, 0
        self.multi_target = self._is_multi_target()
        self.pair = codes.marian_pair(self.name) if self.family == "marian" else (None, None)

    def _is_multi_target(self) -> bool:
        return self.family != "marian" or any(t.startswith(">>") and t.endswith("<<") for t in self.vocab)

    @property
    def fingerprint(self) -> dict:
        """What a translation depends on besides its text (a resumed run reuses work only when equal)."""
        return {"model": self.name, "family": self.family, "batch_size": self.batch_size,
                "max_length": self.max_length, "num_beams": self.num_beams}

    @property
    def default_sources(self) -> list | None:
        """The one source language a single-pair model (``opus-mt-en-de``) reads, else None."""
        return [self.pair[0]] if self.pair[0] else None

    # ---- languages ---------------------------------------------------------------------------------
    def _has_token(self, token: str) -> bool:
        return token in self.vocab or self.tokenizer.convert_tokens_to_ids(token) not in (None, self.tokenizer.unk_token_id)

    def _codes(self, source: str, target: str) -> tuple:
        """(text prefix, source code for the tokenizer or None, forced first token or None)."""
        if self.family == "marian":
            token = codes.marian_target_token(target, self.vocab)
            return (token + " " if token else ""), None, None
        if self.family == "madlad":
            token = codes.language_token("madlad", target)
            if not self._has_token(token):
                raise ValueError(f"{self.name} has no token {token} for target language {target!r}")
            return token + " ", None, None
        src, tgt = codes.language_code(self.family, source), codes.language_token(self.family, target)
        for lang, token in ((source, codes.language_token(self.family, source)), (target, tgt)):
            if not self._has_token(token):
                raise ValueError(f"{self.name} has no token {token} for language {lang!r}")
        return "", src, self.tokenizer.convert_tokens_to_ids(tgt)

    def check(self, pairs: Iterable[tuple]) -> None:
        """ValueError naming the first (source, target) pair this model cannot translate."""
        pairs = list(pairs)
        targets = list(dict.fromkeys(t for _, t in pairs))
        want_src, want_tgt = self.pair
        if self.family == "marian" and not self.multi_target:
            if want_tgt is None and len(targets) > 1:
                raise ValueError(f"{self.name} is a single-target Marian model (no >>xx<< tokens) and its name does "
                                 f"not say its target language: translate into one language at a time, not {targets}")
            wrong = [t for t in targets if want_tgt is not None and codes.ALIASES.get(t, t) != want_tgt]
            if wrong:
                raise ValueError(f"{self.name} translates into {want_tgt!r} only, not {wrong}")
        wrong = [s for s, _ in pairs if want_src is not None and codes.ALIASES.get(s, s) != want_src]
        if wrong:  # opus-mt-en-de, opus-mt-en-mul: English sources only
            raise ValueError(f"{self.name} translates from {want_src!r} only, not from {wrong[0]!r}")
        for source, target in pairs:
            self._codes(source, target)

    # ---- translation -------------------------------------------------------------------------------
    def load(self) -> None:
        """Load the weights (once); the first ``translate`` does it otherwise."""
        import torch
        from transformers import AutoModelForSeq2SeqLM

        if self.model is not None:
            return
        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        with quiet_transformers():
            self.model = AutoModelForSeq2SeqLM.from_pretrained(self.name).to(device).eval()
        self.device = str(device)

    def translate(self, texts: Sequence[str], source: str, target: str,
                  progress: Callable[[int], None] | None = None) -> list:
        """Translations of ``texts`` from ``source`` into ``target``, in order; ``progress(n)`` after each batch."""
        import torch

        texts = list(texts)
        if not texts:
            return []
        prefix, src_code, forced = self._codes(source, target)
        self.load()
        if src_code is not None:
            self.tokenizer.src_lang = src_code
        sources = [prefix + t for t in texts]
        with quiet_transformers():
            lengths = [len(ids) for ids in self.tokenizer(sources, truncation=True, max_length=self.max_length)["input_ids"]]
        self.truncated += sum(n >= self.max_length for n in lengths)
        options = {"max_new_tokens": self.max_length}
        if self.num_beams is not None:
            options["num_beams"] = self.num_beams
        if forced is not None:
            options["forced_bos_token_id"] = forced
        out = [None] * len(texts)
        with quiet_transformers(), torch.inference_mode():
            for batch in length_batches(lengths, self.batch_size):
                encoded = self.tokenizer([sources[i] for i in batch], padding=True, truncation=True,
                                         max_length=self.max_length, return_tensors="pt").to(self.device)
                generated = self.model.generate(**encoded, **options)
                for i, text in zip(batch, self.tokenizer.batch_decode(generated, skip_special_tokens=True)):
                    out[i] = text.strip()
                if progress is not None:
                    progress(len(batch))
        return out

