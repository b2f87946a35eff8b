"""The similarity names every hbfast entry point takes as ``metric=`` (eval, topk, range search, shard
search), checked by one function so that all accept the same names and aliases."""
from __future__ import annotations

SIMILARITIES = ("ip", "cosine", "l2")
ALIASES = {"cos": "cosine"}  # accepted everywhere a metric is: hbfast eval --metric cos, hbfast.topk(metric="cos")


def check_metric(metric: str, allowed=("ip", "cosine")) -> str:
    """``metric``'s one name ("cos" is "cosine"), or a ValueError naming the ones ``allowed`` here."""
    name = ALIASES.get(metric, metric)
    if name not in allowed:
        raise ValueError(f"metric must be one of {tuple(allowed)} (or 'cos'), got {metric!r}")
    return name
