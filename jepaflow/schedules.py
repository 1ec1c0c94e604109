"""Per-step schedules as pure functions of the step index.

They reproduce facebookresearch/ijepa ``src/utils/schedulers.py`` and the momentum generator of ``src/train.py``:

* the official LR and weight-decay schedulers are stepped *before* each training step, so the value used at the
  0-based step ``i`` is the schedule evaluated at ``i + 1``; :func:`lr_at` and :func:`weight_decay_at` take ``i``
  and apply that shift;
* the momentum generator yields its first value at step 0, so :func:`momentum_at` is evaluated at ``i``;
* every schedule spans ``ipe_scale * epochs * iterations_per_epoch`` steps (``ipe_scale`` 1.0 in the official
  configs), which the caller passes as ``total``;
* past ``total`` (only reachable with ``ipe_scale < 1``) every schedule stays at its final value; the official
  formulas would wrap around the cosine, and the official momentum generator would run out (stopping the run)
  rather than pass its final value (a momentum above 1 would push the target away from the online network).

Being pure functions of the step, they need no state in checkpoints: resuming at step ``i`` resumes them exactly.
"""

from __future__ import annotations

import math


def warmup_cosine(s: float, warmup: int, total: int, start: float, peak: float, final: float) -> float:
    """Linear warmup from ``start`` to ``peak`` over ``warmup`` steps, then cosine decay to ``final`` at ``total``."""
    if s < warmup:
        return start + (s / max(1, warmup)) * (peak - start)
    progress = min(1.0, (s - warmup) / max(1, total - warmup))
    return max(final, final + (peak - final) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def cosine(s: float, total: float, start: float, final: float) -> float:
    """Cosine from ``start`` (s=0) to ``final`` (s=total), clamped at ``final`` past the end."""
    value = final + (start - final) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, s / total)))
    return max(final, value) if final <= start else min(final, value)


def linear(s: float, total: float, start: float, end: float) -> float:
    """Straight line from ``start`` (s=0) to ``end`` (s=total)."""
    return start + s * (end - start) / total


def lr_at(i: int, warmup: int, total: int, start: float, peak: float, final: float) -> float:
    """Learning rate used at 0-based step ``i`` (I-JEPA: warmup 2e-4 -> 1e-3, cosine to 1e-6)."""
    return warmup_cosine(i + 1, warmup, total, start, peak, final)


def weight_decay_at(i: int, total: int, start: float, final: float) -> float:
    """Weight decay used at 0-based step ``i`` (I-JEPA: cosine 0.04 -> 0.4)."""
    return cosine(i + 1, total, start, final)


def momentum_at(i: int, total: float, start: float, end: float) -> float:
    """EMA momentum used after 0-based step ``i`` (I-JEPA: linear 0.996 -> 1.0), held at ``end`` past ``total``."""
    return linear(min(i, total), total, start, end)
