"""Exponential moving average of online weights into a target network (BYOL, Grill et al. 2020; I-JEPA,
Assran et al. 2023, sec. 3 and facebookresearch/ijepa ``src/train.py``, "momentum update of target encoder";
data2vec, Baevski et al. 2022, sec. 3.2 "Teacher parameterization").

After the optimizer step with 0-based index ``k`` of a schedule of ``K`` steps, every target parameter moves
toward its online counterpart with momentum ``m_k``::

    target <- m_k * target + (1 - m_k) * online

and the schedule of ``m_k`` (from ``momentum_start`` to ``momentum_end``) is one of:

* ``linear`` over the whole run (I-JEPA, the default): ``m_k = start + (end - start) * k / K``;
* ``cosine`` over the whole run (BYOL, sec. 3.2 and google-deepmind/deepmind-research ``byol/utils/schedules.py:
  target_ema``): ``m_k = end - (end - start) * (cos(pi * k / K) + 1) / 2``; with ``end = 1`` this is the paper's
  ``tau = 1 - (1 - tau_base) * (cos(pi k / K) + 1) / 2``;
* either shape over the first ``ramp_steps`` updates only, then constant at ``end`` (data2vec: "linearly increases
  tau from tau_0 to tau_e over the first tau_n updates, after which the value is kept constant").
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from torch import nn

from jepaflow.interfaces import PluginConfig, TargetUpdater
from jepaflow.layers.target import ema_update_
from jepaflow.schedules import cosine, momentum_at


def ema_momentum(step: float, total_steps: float, start: float, end: float, schedule: str = "linear",
                 ramp_steps: int | None = None) -> float:
    """EMA momentum used after the 0-based optimizer step ``step``.

    Args:
        step: ``k``, the index of the step just taken.
        total_steps: ``K``, the schedule length of the run (the engine passes ``ipe_scale x epochs x steps``).
        start, end: momentum at ``k = 0`` and at the end of the schedule.
        schedule: ``"linear"`` or ``"cosine"`` (see the module docstring).
        ramp_steps: if set, the schedule spans the first ``ramp_steps`` updates instead of ``K`` and the momentum
            stays at ``end`` afterwards.
    Returns:
        the momentum ``m_k``, never past ``end``: every schedule stays at ``end`` once its length is reached
        (reachable with ``optim.ipe_scale < 1``, where the official I-JEPA generator runs out and stops the run).
    """
    length = float(ramp_steps) if ramp_steps is not None else float(total_steps)
    if schedule == "linear":
        return momentum_at(step, length, start, end)  # start + (end - start) * min(k, length) / length
    if schedule == "cosine":
        return cosine(step, length, start, end)  # end + (start - end) * (1 + cos(pi * k / length)) / 2, clamped
    raise ValueError(f"unknown momentum schedule {schedule!r}")


class EMATargetUpdater(TargetUpdater):
    """EMA target updater: momentum from ``momentum_start`` to ``momentum_end`` per step, on a linear (I-JEPA,
    default: 0.996 -> 1.0 over the run) or cosine (BYOL) schedule, optionally ramped over the first
    ``ramp_steps`` updates only (data2vec).

    Parameters are averaged; buffers (e.g. fixed position tables, BatchNorm statistics) are left to the target
    network, as in the official I-JEPA code, which averages ``parameters()`` only.
    """

    class Config(PluginConfig):
        momentum_start: float = Field(0.996, ge=0.0, le=1.0, description="momentum at step 0")
        momentum_end: float = Field(1.0, ge=0.0, le=1.0, description="momentum at the end of the schedule")
        schedule: Literal["linear", "cosine"] = Field(
            "linear",
            description="shape from start to end: linear (I-JEPA, facebookresearch/ijepa src/train.py) or cosine "
            "(BYOL, Grill et al. 2020 sec. 3.2: tau = 1 - (1 - tau_base)(cos(pi k / K) + 1) / 2)",
        )
        ramp_steps: int | None = Field(
            None,
            ge=1,
            le=2**40,
            description="if set, reach momentum_end after this many updates and stay there (data2vec, Baevski et "
            "al. 2022 sec. 3.2: tau_0 -> tau_e over the first tau_n updates); None: the schedule spans the run",
        )

        @model_validator(mode="after")
        def _ordered(self):
            if self.momentum_end < self.momentum_start:
                raise ValueError("momentum_end must be >= momentum_start")
            return self

    def __init__(self, config: Config):
        self.config = config

    def momentum(self, step: int, total_steps: float) -> float:
        c = self.config
        return ema_momentum(step, total_steps, c.momentum_start, c.momentum_end, c.schedule, c.ramp_steps)

    def update(self, pairs: list[tuple[nn.Module, nn.Module]], step: int, total_steps: float) -> dict[str, float]:
        m = self.momentum(step, total_steps)
        ema_update_(pairs, m)
        return {"momentum": m}
