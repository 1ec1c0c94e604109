"""Exponential moving average of online weights into a target network (BYOL, Grill et al. 2020; I-JEPA,
Assran et al. 2023, sec. 3 and facebookresearch/ijepa ``src/train.py``, "momentum update of target encoder")."""

from __future__ import annotations

import torch
from pydantic import Field, model_validator
from torch import nn

from jepaflow.interfaces import PluginConfig, TargetUpdater
from jepaflow.schedules import momentum_at


@torch.no_grad()
def ema_update_(online: list[torch.Tensor], target: list[torch.Tensor], momentum: float) -> None:
    """``target <- momentum * target + (1 - momentum) * online``, in place, fused over all tensors."""
    torch._foreach_lerp_(target, online, 1.0 - momentum)


class EMATargetUpdater(TargetUpdater):
    """EMA target updater with a linear momentum schedule over the run (0.996 -> 1.0 per step by default).

    Parameters are averaged; buffers (e.g. fixed position tables, BatchNorm statistics) are left to the target
    network, as in the official code, which averages ``parameters()`` only.
    """

    class Config(PluginConfig):
        momentum_start: float = Field(0.996, ge=0.0, le=1.0, description="momentum at step 0")
        momentum_end: float = Field(1.0, ge=0.0, le=1.0, description="momentum at the end of the schedule")

        @model_validator(mode="after")
        def _ordered(self):
            if self.momentum_end < self.momentum_start:
                raise ValueError("momentum_end must be >= momentum_start")
            return self

    def __init__(self, config: Config):
        self.config = config

    def momentum(self, step: int, total_steps: float) -> float:
        return momentum_at(step, total_steps, self.config.momentum_start, self.config.momentum_end)

    def update(self, pairs: list[tuple[nn.Module, nn.Module]], step: int, total_steps: float) -> dict[str, float]:
        m = self.momentum(step, total_steps)
        online: list[torch.Tensor] = []
        target: list[torch.Tensor] = []
        for o, t in pairs:
            op, tp = list(o.parameters()), list(t.parameters())
            if len(op) != len(tp):
                raise RuntimeError(f"online/target parameter lists differ ({len(op)} vs {len(tp)})")
            online += [p.detach() for p in op]
            target += list(tp)
        if online:
            ema_update_(online, target, m)
        return {"momentum": m}
