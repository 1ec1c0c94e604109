"""AdamW with the I-JEPA parameter groups: no weight decay on biases and 1-D parameters (norm weights),
as facebookresearch/ijepa ``src/helper.py:init_opt``. Learning rate and weight decay are set per step by the
trainer from :mod:`jepaflow.schedules`; groups marked ``apply_wd`` follow the weight-decay schedule."""

from __future__ import annotations

import torch
from torch import nn

from jepaflow.config import OptimConfig


def split_decay(module: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Trainable parameters split into (decayed, not decayed): biases and 1-D tensors are not decayed."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if name.endswith("bias") or p.ndim <= 1 else decay).append(p)
    return decay, no_decay


def build_optimizer(module: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    decay, no_decay = split_decay(module)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay, "apply_wd": True},
        {"params": no_decay, "weight_decay": 0.0, "apply_wd": False},
    ]
    return torch.optim.AdamW(groups, lr=cfg.start_lr, betas=cfg.betas, eps=cfg.eps)


def set_hyperparams(opt: torch.optim.Optimizer, lr: float, wd: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr
        if g.get("apply_wd", False):
            g["weight_decay"] = wd
