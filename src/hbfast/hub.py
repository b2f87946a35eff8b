"""Is a ``--model`` value a local directory or a Hugging Face hub id? Decided at once, before any model
library is imported, so that a mistyped path is an error naming it instead of minutes of hub retries.

The rule (``hbfast train --help`` states it): a value that exists on disk is a local directory. A
value shaped like a hub id -- ``name`` or ``org/name`` of letters, digits, ``-``, ``_`` and ``.`` --
that does not exist locally is a hub id. Anything else (starts with ``/``, ``./``, ``../`` or ``~``,
holds a second ``/`` or a backslash, ends with ``/``) is a local path, and a missing one is an error.
A hub id must be in the local Hugging Face cache or the hub must answer one quick connection;
otherwise it too is an error at once.
"""
from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from urllib.parse import urlparse

_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")


def is_hub_id(name: str) -> bool:
    """``name`` or ``org/name`` (and no ``..``, which a hub id cannot hold)."""
    return bool(_HUB_ID.fullmatch(name)) and ".." not in name and len(name) <= 96


def check_local_or_hub(model) -> str:
    """"local" (it exists) or "hub" (a hub id's shape); a missing local path raises FileNotFoundError."""
    name = os.fspath(model)
    if Path(name).expanduser().exists():
        return "local"
    if not is_hub_id(name):
        raise FileNotFoundError(f"model directory {name} does not exist")
    return "hub"


def hub_cache() -> Path:
    """Where huggingface_hub caches models (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def in_hub_cache(repo_id: str) -> bool:
    """A snapshot of ``repo_id`` with a config.json is in the local cache."""
    snapshots = hub_cache() / ("models--" + repo_id.replace("/", "--")) / "snapshots"
    return any(snapshots.glob("*/config.json"))


def hub_unreachable(timeout: float = 3.0) -> str | None:
    """None if a connection to the hub (HF_ENDPOINT) opens within ``timeout`` seconds (or a proxy is set),
    else why not."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # through a proxy: a direct connection says nothing; the libraries try (and retry) themselves
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout).close()
        return None
    except OSError as e:
        return f"{url.hostname} cannot be reached ({e})"


def check_models(names) -> bool:
    """Check every given model of a command (None: the packaged one) before anything is loaded; True when
    they are all local or cached while the hub is unreachable, so the hub can be kept offline."""
    hub = [os.fspath(n) for n in names if n is not None and check_local_or_hub(n) == "hub"]
    if not hub:
        return True
    why = hub_unreachable()
    if why is None:
        return False
    for name in hub:
        if not in_hub_cache(name):
            raise FileNotFoundError(f"model {name}: no such local directory, and as a hub id it is not in the "
                                    f"Hugging Face cache ({hub_cache()}) while {why}; give a model directory")
    return True
