"""Which translation model family a model is, and how each family names a language.

Exists because hbfast's data names languages by short ISO 639-1 codes (en, de, zh; XTD's jp), while
each family of translation models wants its own: Marian multi-target models a ``>>deu<<`` token in
front of the source, NLLB FLORES-200 codes (``deu_Latn``) as source and forced first target
token, M2M100 ``__de__`` tokens, mBART-50 ``de_DE``, madlad400 a ``<2de>`` token in front of the
source. Pure functions: no model is loaded here.
"""
from __future__ import annotations

import re
from collections.abc import Container

FAMILIES = ("marian", "nllb", "m2m100", "mbart50", "madlad")

# hbfast code | Marian >>xx<< candidates (ISO 639-3, most specific first) | NLLB (FLORES-200) | mBART-50
# M2M100 and madlad400 use the ISO 639-1 code itself (``__de__``, ``<2de>``); "-" = the family has none.
_TABLE = """
af  afr           afr_Latn  af_ZA
ar  ara,arb       arb_Arab  ar_AR
bg  bul           bul_Cyrl  -
bn  ben           ben_Beng  bn_IN
cs  ces           ces_Latn  cs_CZ
da  dan           dan_Latn  -
de  deu           deu_Latn  de_DE
el  ell           ell_Grek  -
en  eng           eng_Latn  en_XX
es  spa           spa_Latn  es_XX
et  est           est_Latn  et_EE
fa  pes,fas       pes_Arab  fa_IR
fi  fin           fin_Latn  fi_FI
fr  fra           fra_Latn  fr_XX
he  heb           heb_Hebr  he_IL
hi  hin           hin_Deva  hi_IN
hr  hrv           hrv_Latn  hr_HR
hu  hun           hun_Latn  -
id  ind           ind_Latn  id_ID
it  ita           ita_Latn  it_IT
ja  jpn           jpn_Jpan  ja_XX
ko  kor           kor_Hang  ko_KR
lt  lit           lit_Latn  lt_LT
lv  lav           lvs_Latn  lv_LV
nl  nld           nld_Latn  nl_XX
pl  pol           pol_Latn  pl_PL
pt  por           por_Latn  pt_XX
ro  ron           ron_Latn  ro_RO
ru  rus           rus_Cyrl  ru_RU
sk  slk           slk_Latn  -
sl  slv           slv_Latn  sl_SI
sv  swe           swe_Latn  sv_SE
sw  swh,swa       swh_Latn  sw_KE
ta  tam           tam_Taml  ta_IN
th  tha           tha_Thai  th_TH
tr  tur           tur_Latn  tr_TR
uk  ukr           ukr_Cyrl  uk_UA
ur  urd           urd_Arab  ur_PK
vi  vie           vie_Latn  vi_VN
zh  cmn_Hans,zho,cmn  zho_Hans  zh_CN
"""
ALIASES = {"jp": "ja"}  # XTD10 names Japanese jp
LANGUAGES = {}
for _line in _TABLE.strip().splitlines():
    _code, _marian, _nllb, _mbart = _line.split()
    LANGUAGES[_code] = {"marian": tuple(_marian.split(",")), "nllb": _nllb, "m2m100": _code,
                        "mbart50": None if _mbart == "-" else _mbart, "madlad": _code}

# What a family's own code looks like: such a code not in the table is passed through as it is.
_NATIVE = {"nllb": r"[a-z]{3}_[A-Z][a-z]{3}", "mbart50": r"[a-z]{2}_[A-Z]{2}", "m2m100": r"[a-z]{2,3}",
           "madlad": r"[a-z]{2,3}(_[A-Za-z]{4})?"}
_EXAMPLE = {"nllb": "deu_Latn", "mbart50": "de_DE", "m2m100": "de", "madlad": "de"}
_NEEDS_SOURCE = ("nllb", "m2m100", "mbart50")  # the tokenizer marks the source language


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"unknown translation model family {family!r}; known: {', '.join(FAMILIES)}")


def needs_source_language(family: str) -> bool:
    """Whether the family's tokenizer must be told the source language (NLLB, M2M100, mBART-50)."""
    _check_family(family)
    return family in _NEEDS_SOURCE


def language_code(family: str, language: str) -> str:
    """The family's own code of ``language`` (an hbfast code like ``de``, or already the family's own
    code like ``deu_Latn``); ValueError naming the language when the family has none."""
    _check_family(family)
    if family == "marian":
        raise ValueError("Marian models name languages by tokens of their vocabulary: use marian_target_token")
    language = ALIASES.get(language, language)
    if language in LANGUAGES:
        code = LANGUAGES[language][family]
        if code is None:
            raise ValueError(f"{family} has no code for language {language!r}")
        return code
    if not isinstance(language, str) or re.fullmatch(_NATIVE[family], language) is None:
        raise ValueError(f"{family} has no code for language {language!r}: give one of {', '.join(LANGUAGES)} "
                         f"or the family's own code (like {_EXAMPLE[family]})")
    return language


def language_token(family: str, language: str) -> str:
    """The vocabulary token that names ``language`` for the family: NLLB ``deu_Latn``, M2M100
    ``__de__``, mBART-50 ``de_DE``, madlad ``<2de>``."""
    code = language_code(family, language)
    return {"m2m100": f"__{code}__", "madlad": f"<2{code}>"}.get(family, code)


def marian_target_token(language: str, vocab: Container[str]) -> str | None:
    """The ``>>xxx<<`` token of ``language`` in a Marian vocabulary (the ISO 639-3 code, or the
    ISO 639-1 one as opus-mt-en-ROMANCE has), None for a single-target model (no such tokens)."""
    tokens = [t for t in vocab if isinstance(t, str) and t.startswith(">>") and t.endswith("<<")]
    if not tokens:
        return None
    language = ALIASES.get(language, language)
    candidates = [*LANGUAGES.get(language, {}).get("marian", ()), language]
    for code in candidates:
        if f">>{code}<<" in vocab:
            return f">>{code}<<"
    shown = ", ".join(sorted(tokens)[:12]) + (" ..." if len(tokens) > 12 else "")
    raise ValueError(f"this Marian model has no target token for language {language!r} "
                     f"(looked for {', '.join(f'>>{c}<<' for c in candidates)}; it has {shown})")


def marian_pair(name: str) -> tuple:
    """(source, target) of a single-pair Marian name like ``opus-mt-en-de`` (either None where the
    name does not say, or says a group like ``mul`` / ``ROMANCE``)."""
    match = re.search(r"opus-mt-(?:tc-(?:big|base)-)?([A-Za-z_]+)-([A-Za-z_]+)$", str(name).rstrip("/"))
    if match is None:
        return None, None
    one = [x if re.fullmatch(r"[a-z]{2,3}", x) and x != "mul" else None for x in match.groups()]
    return tuple(ALIASES.get(x, x) if x else None for x in one)


def model_family(model_type: str, tokenizer_class: str, vocab: Container[str]) -> str:
    """The family of a model from its config's ``model_type``, its tokenizer's class name and vocabulary."""
    if model_type == "marian":
        return "marian"
    if model_type in ("m2m_100", "nllb-moe"):  # NLLB checkpoints are M2M100 models with FLORES codes
        return "nllb" if "Nllb" in tokenizer_class or "eng_Latn" in vocab or model_type == "nllb-moe" else "m2m100"
    if model_type == "mbart" and ("MBart50" in tokenizer_class or "en_XX" in vocab):
        return "mbart50"
    if model_type in ("t5", "mt5") and "<2en>" in vocab:
        return "madlad"
    raise ValueError(f"not a supported translation model (model_type {model_type!r}, tokenizer {tokenizer_class}): "
                     "hbfast translate knows Marian (opus-mt), NLLB, M2M100, mBART-50 and madlad400 "
                     "(a T5 with <2xx> language tokens)")


def parse_languages(value, what: str = "--to") -> list:
    """``"de,fr"`` or a sequence of codes -> a list of distinct, non-empty codes (ValueError otherwise)."""
    if value is None:
        raise ValueError(f"{what} needs at least one language")
    items = value.split(",") if isinstance(value, str) else list(value)
    languages = [str(x).strip() for x in items if str(x).strip()]
    if not languages:
        raise ValueError(f"{what} needs at least one language, got {value!r}")
    if len(set(languages)) != len(languages):
        raise ValueError(f"{what} names a language twice: {languages}")
    return languages
