"""Training FLOPs of a recipe: one training step counted by ``torch.utils.flop_counter``, times the steps.

The step is the objective's forward and backward on one global batch of random images of the recipe's shape,
collated as in training (the recipe's masker through the trainer's :class:`~jepaflow.engine.data.MaskingCollator`,
or the recipe's view sampler applied to random 8-bit images), with the model built as the trainer builds it
(:func:`jepaflow.engine.build.build_objective`, seeded with the recipe's seed). What is counted is what
``FlopCounterMode`` counts: matrix products, convolutions and attention, forward and backward, 2 FLOPs per
multiply-add; element-wise work, normalization, the optimizer step and the EMA update are not counted (they are
a few percent of these models' arithmetic). Target-encoder forwards under ``no_grad`` count their forward only.

On CPU, ``F.scaled_dot_product_attention`` runs as ``aten._scaled_dot_product_flash_attention_for_cpu``, which
torch's counter does not know; :func:`_cpu_attention_flops` adds it: the forward with torch's own formula
(``sdpa_flop_count``: the two products ``Q K^T`` and ``A V``), the backward as the four products of the
written-out attention's backward. So a count is the same whether attention runs fused or written out (a test
checks it), and it is the model's arithmetic: the recomputation of the scores that flash-attention kernels do
in their backward (which torch's formula for its GPU kernels includes, 5 products instead of 4) is not counted.

A batch larger than ``max_batch`` is counted at ``max_batch`` images and scaled linearly. The terms that are not
linear in the batch (a contrastive loss's ``B x B`` similarity matrix) are then slightly misjudged; the scaling
is recorded in the note.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: largest micro-batch counted as is (larger ones are counted at this size and scaled)
DEFAULT_MAX_BATCH = 256


@dataclass(frozen=True)
class StepFlops:
    """FLOPs of one optimizer step (all micro-batches of the global batch) and how they were counted."""

    flops: float
    counted_batch: int
    batch: int
    note: str


def _cpu_attention_flops() -> dict[Any, Any]:
    import torch
    from torch.utils.flop_counter import sdpa_flop_count

    def forward(query, key, value, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query, key, value)

    def backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
        # dV = A^T dO, dA = dO V^T, dQ = dS K, dK = dS^T Q: twice the forward's two products
        return 2 * sdpa_flop_count(query, key, value)

    aten = torch.ops.aten
    mapping = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu] = forward
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu_backward] = backward
    return mapping


def count_flops(fn, *args: Any, **kwargs: Any) -> float:
    """FLOPs of ``fn(*args, **kwargs)`` (forward and whatever backward it runs), CPU attention included."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False, custom_mapping=_cpu_attention_flops()) as counter:
        fn(*args, **kwargs)
    return float(counter.get_total_flops())


def _loadable(recipe: dict[str, Any]) -> dict[str, Any]:
    """The resolved recipe, made loadable anywhere: metric sinks that may not be installed here are dropped
    (they do not change the model)."""
    out = copy.deepcopy(recipe)
    if isinstance(out.get("train"), dict) and "loggers" in out["train"]:
        out["train"]["loggers"] = ["jsonl"]
    return out


def step_flops(recipe: dict[str, Any], max_batch: int = DEFAULT_MAX_BATCH) -> StepFlops:
    """FLOPs of one training step of a resolved recipe (a run's ``recipe.yaml`` as a dict); see the module
    docstring. Runs on the CPU; the process's random state is left as it was."""
    import torch

    from jepaflow.config import load_recipe
    from jepaflow.engine.build import build_masker, build_objective, build_views
    from jepaflow.engine.data import MaskingCollator

    r = load_recipe(_loadable(recipe))
    batch = r.train.batch_size
    accum = r.optim.accum_steps
    micro = batch // accum
    counted = min(micro, max_batch)
    data = r.components["data"].config
    enc = r.components.get("encoder")
    side = getattr(data, "image_size", None) or getattr(enc.config if enc else None, "img_size", None)
    chans = getattr(data, "channels", None) or getattr(enc.config if enc else None, "in_chans", None) or 3
    if side is None:
        raise ValueError("the recipe names no image size (data.image_size or encoder.img_size)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(r.seed)
        objective = build_objective(r)
        objective.train()
        masker, views = build_masker(r), build_views(r)
        gen = torch.Generator().manual_seed(r.seed)
        if views is not None:  # the view sampler's input: an 8-bit image, as the data set hands it over
            raw = torch.randint(0, 256, (counted, int(chans), int(side), int(side)), dtype=torch.uint8, generator=gen)
            images: list[Any] = [views(raw[i]) for i in range(counted)]
        else:
            images = list(torch.randn(counted, int(chans), int(side), int(side), generator=gen))
        collate = MaskingCollator(masker, tuple(objective.representation_encoder().grid_size), r.seed)
        batch_obj = collate([(img, 0, 0, 0, 0) for img in images])  # (image, label, step, slot, skipped)

        def step() -> None:
            out = objective(batch_obj)
            out.loss.backward()

        flops = count_flops(step)
    per_step = flops * (micro / counted) * accum
    note = "counted on one step"
    if counted < micro:
        note = f"counted at batch {counted} and scaled linearly to {micro}"
    if accum > 1:
        note += f", x {accum} micro-batches"
    return StepFlops(per_step, counted, batch, note)


class FlopsCache:
    """Per-step counts on disk (a JSON file), keyed by the recipe part that decides the model and the batch, the
    torch version and the counting batch: a group's count is made once, whatever the number of its seeds and
    of compare's runs."""

    def __init__(self, path: Path | None):
        self.path = path
        self.entries: dict[str, Any] = {}
        if path is not None and path.is_file():
            try:
                loaded = json.loads(path.read_text())
                self.entries = loaded if isinstance(loaded, dict) else {}
            except (OSError, ValueError):
                self.entries = {}

    @staticmethod
    def key(model_recipe: dict[str, Any], max_batch: int) -> str:
        import torch

        from jepaflow import __version__

        text = json.dumps({"recipe": model_recipe, "max_batch": max_batch, "torch": torch.__version__,
                           "jepaflow": __version__}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    def get(self, key: str) -> StepFlops | None:
        e = self.entries.get(key)
        if not isinstance(e, dict):
            return None
        try:
            return StepFlops(float(e["flops"]), int(e["counted_batch"]), int(e["batch"]), str(e["note"]))
        except (KeyError, TypeError, ValueError):
            return None

    def put(self, key: str, value: StepFlops) -> None:
        self.entries[key] = {"flops": value.flops, "counted_batch": value.counted_batch, "batch": value.batch,
                             "note": value.note}
        if self.path is None:
            return
        try:  # atomic: a second compare never reads half a file
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".flops.", suffix=".tmp", dir=self.path.parent)
            with os.fdopen(fd, "w") as f:
                json.dump(self.entries, f, indent=1)
            os.replace(tmp, self.path)
        except OSError:
            pass  # a cache that cannot be written costs a recount, never the comparison


__all__ = ["DEFAULT_MAX_BATCH", "FlopsCache", "StepFlops", "count_flops", "step_flops"]
