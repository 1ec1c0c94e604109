"""The engine's side of checkpoints: what a training checkpoint holds and how a resume reads it back.

Reading and writing files is :mod:`jepaflow.checkpoints` (``weights_only`` unpickling, atomic writes, finite
weights); this module adds the training-state entries (RNG) and the resume-time checks.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from jepaflow.checkpoints import (
    FORMAT,
    VERSION,
    check_finite,
    check_training_checkpoint,
    load_state_dict_checked,
    nonfinite_count,
    read_checkpoint,
    write_checkpoint,
)
from jepaflow.errors import CheckpointError, clip

__all__ = ["FORMAT", "VERSION", "load_checkpoint", "nonfinite_weights", "restore", "rng_state", "save_atomic",
           "set_rng_state"]


def save_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` so that a crash or a full disk mid-write never replaces the previous file."""
    write_checkpoint(obj, path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A jepaflow training checkpoint, read safely and checked to have every entry a resume needs."""
    return check_training_checkpoint(read_checkpoint(path, "cpu", "checkpoint"), path)


def rng_state() -> dict[str, Any]:
    """The generator states a resume restores: uint8 tensors only (``weights_only``-loadable)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = [s for s in state["cuda"] if isinstance(s, torch.Tensor)]
        if len(cuda) == torch.cuda.device_count():  # a resume on another number of GPUs starts fresh streams
            torch.cuda.set_rng_state_all(cuda)


def nonfinite_weights(module: torch.nn.Module) -> torch.Tensor:
    """How many parameter/buffer tensors of ``module`` hold NaN or inf: a 0-d tensor on their device, computed
    with one fused reduction and no host sync (the caller syncs once, when it decides whether to save)."""
    return nonfinite_count([*module.parameters(), *module.buffers()])


def restore(saved: dict[str, Any], objective: torch.nn.Module, optimizer: torch.optim.Optimizer, path: Path,
            total_steps: int, load: Callable[[dict[str, Any]], None] | None = None) -> int:
    """Load a checked training checkpoint into ``objective`` and ``optimizer``, restore the RNG, and return its
    step. Weights that do not match the recipe, non-finite weights, an optimizer state of another model and a
    step past the end of the run are each one :class:`CheckpointError`. ``load(saved)``, if given, replaces the
    two ``load_state_dict`` calls (the trainer's FSDP path loads the full tensors into shards)."""
    where = clip(str(path), 300)
    check_finite(saved["objective"], f"{where} ('objective')")
    if load is None:
        load_state_dict_checked(objective, saved["objective"], f"{where} ('objective')")
    try:
        if load is not None:
            load(saved)
        else:
            optimizer.load_state_dict(saved["optimizer"])
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as exc:
        raise CheckpointError(
            f"{where}: the optimizer state does not fit this model's optimizer ({type(exc).__name__}: "
            f"{clip(str(exc), 200)})",
            "resume with the recipe and version that wrote the checkpoint, or start a new run",
        ) from None
    step = saved["step"]
    if step > total_steps:
        raise CheckpointError(f"{where} is at step {step}, past the end of this run ({total_steps} steps)",
                              "check that the run folder and the recipe belong together")
    try:
        set_rng_state(saved["rng"])
    except (RuntimeError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: the stored RNG state cannot be restored ({clip(str(exc), 200)})",
                              "the file is damaged; resume from an intact checkpoint") from None
    return step
