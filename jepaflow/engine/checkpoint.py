"""Checkpoints: written atomically (temp file in the same folder, fsync, rename), read back with clear errors.

A jepaflow checkpoint is a dict::

    format: "jepaflow-checkpoint", version: 1
    recipe: the resolved recipe (Recipe.to_dict()), enough to rebuild every module
    objective: the objective's state_dict (encoder, predictor, target encoder, ...)
    optimizer: the optimizer's state_dict
    step: optimizer steps taken; epoch: step // steps_per_epoch
    rng: torch CPU (and CUDA) RNG states, so that stochastic layers continue exactly
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from jepaflow.errors import JepaflowError

FORMAT = "jepaflow-checkpoint"
VERSION = 1


def save_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` so that a crash mid-write never leaves a truncated file in its place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise JepaflowError(f"no checkpoint at {path}", "check the path (a run folder keeps checkpoints/last.pt)")
    try:
        # Our own format stores only tensors and plain Python containers.
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise JepaflowError(
            f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}",
            "the file is damaged or not a PyTorch checkpoint; use an earlier one",
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise JepaflowError(f"{path} is not a jepaflow checkpoint", "pass a run folder or a jepaflow .pt file")
    return ckpt


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
