"""Atomic, resumable checkpoints: ``OUT/checkpoint-<step>/`` is a usable model directory plus the
trainer state (optimizer, scheduler, sampler position, early stopping, every RNG state).

A checkpoint is written into ``OUT/.tmp-checkpoint-<step>/`` and renamed into place only when
complete, so a kill or a full disk at any moment leaves the previous checkpoint as the latest
complete one. Loading checks that the checkpoint belongs to this run (same run-defining options
and task) and names the problem when it does not, or when a file is unreadable.
"""
from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

STATE_FILE = "trainer_state.pt"
_NAME = re.compile(r"^checkpoint-(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message names the directory and the cause."""


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoints(out: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints of ``out``, oldest first."""
    out = Path(out)
    if not out.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in out.iterdir() if (m := _NAME.match(p.name)) and p.is_dir()]
    return sorted(found)


def check_resume_directory(out: str | os.PathLike) -> None:
    """--resume continues a run in ``out``: a missing directory is an error (and is not created)."""
    if not Path(out).is_dir():
        raise FileNotFoundError(f"--resume: the directory {out} does not exist, so it holds no checkpoint to "
                                "resume from (drop --resume to start a run)")


def latest(out: str | os.PathLike) -> Path | None:
    found = checkpoints(out)
    return found[-1][1] if found else None


def remove_partial(out: str | os.PathLike) -> None:
    """Temporary directories of checkpoints a kill interrupted."""
    out = Path(out)
    if out.is_dir():
        for p in out.glob(".tmp-checkpoint-*"):
            shutil.rmtree(p, ignore_errors=True)


def write(out: Path, step: int, save_model, state: dict, rank: int = 0, barrier=lambda: None) -> Path:
    """Write checkpoint ``step``: ``save_model(directory)`` (rank 0), ``state`` (rank 0) and each rank's
    RNG state, into a temporary directory that rank 0 renames into place after every rank wrote."""
    final = out / f"checkpoint-{step}"
    tmp = out / f".tmp-checkpoint-{step}"
    error = None
    try:
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        barrier()
        if rank == 0:
            save_model(tmp)
            torch.save(state, tmp / STATE_FILE)
        torch.save(rng_state(), tmp / f"rng-rank{rank}.pt")
    except OSError as e:
        error = e
    barrier()
    if rank == 0 and error is None:
        try:
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        except OSError as e:
            error = e
    if error is not None:
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        good = latest(out)
        raise CheckpointError(
            f"could not write checkpoint {final} ({error.strerror or error}); nothing was lost: the last good "
            f"checkpoint is {good if good is not None else '(none yet)'}") from error
    return final


def read(directory: Path, rank: int, expect: dict) -> tuple[dict, dict]:
    """(trainer state, this rank's RNG state) of ``directory``, after checking it matches ``expect``."""
    files = [directory / STATE_FILE, directory / f"rng-rank{rank}.pt"]
    loaded = []
    for f in files:
        if not f.is_file():
            raise CheckpointError(f"checkpoint {directory} is incomplete: {f.name} is missing "
                                  f"(a different number of processes, or not an hbfast checkpoint)")
        try:
            loaded.append(torch.load(f, map_location="cpu", weights_only=False))
        except Exception as e:
            raise CheckpointError(f"checkpoint {directory} is corrupt: {f.name} cannot be read "
                                  f"({type(e).__name__}: {e})") from None
    state, rng = loaded
    if not isinstance(state, dict) or "run" not in state:
        raise CheckpointError(f"checkpoint {directory} is corrupt: {STATE_FILE} holds no trainer state")
    differ = {k: (state["run"].get(k), v) for k, v in expect.items() if state["run"].get(k) != v}
    if differ:
        detail = "; ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, (a, b) in differ.items())
        raise CheckpointError(f"checkpoint {directory} belongs to a different run ({detail}); "
                              f"use the same options or another --out")
    return state, rng


def prune(out: Path, keep: int) -> None:
    if keep > 0:
        for _, p in checkpoints(out)[:-keep]:
            shutil.rmtree(p, ignore_errors=True)
