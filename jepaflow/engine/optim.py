"""Optimizers with the I-JEPA parameter groups: no weight decay on biases and 1-D parameters (norm weights),
as facebookresearch/ijepa ``src/helper.py:init_opt``. Learning rate and weight decay are set per step by the
trainer from :mod:`jepaflow.schedules`; groups marked ``apply_wd`` follow the weight-decay schedule.

``adamw`` is torch's AdamW; ``fused=True`` (``train.fused_optimizer``) selects its fused kernel (one kernel over all
parameters, on CPU and CUDA), which computes the same update as the default implementation. ``lars`` is SGD with momentum and layer-wise trust ratios (You et al. 2017, "Large
Batch Training of Convolutional Networks"), as used by SimCLR, BYOL and VICReg on ImageNet; biases and 1-D
parameters are excluded from both weight decay and the trust-ratio adaptation, as those papers do.
"""

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


class LARS(torch.optim.Optimizer):
    """SGD + momentum with a per-tensor trust ratio ``eta * ||w|| / ||g + wd * w||`` (groups with ``lars=False``
    are plain SGD + momentum). Decoupled from the schedule: ``lr`` and ``weight_decay`` are set per step."""

    def __init__(self, params, lr: float, momentum: float = 0.9, eta: float = 0.001, weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, momentum=momentum, eta=eta, weight_decay=weight_decay, lars=True))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                d = p.grad.add(p, alpha=g["weight_decay"]) if g["weight_decay"] else p.grad.clone()
                if g["lars"]:
                    w_norm, d_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(d)
                    # trust ratio stays a device tensor (no host sync); 1 where either norm is 0
                    ratio = torch.where((w_norm > 0) & (d_norm > 0), g["eta"] * w_norm / d_norm, torch.ones_like(w_norm))
                    d.mul_(ratio)
                buf = self.state[p].get("momentum_buffer")
                if buf is None:
                    buf = self.state[p]["momentum_buffer"] = d.clone()
                else:
                    buf.mul_(g["momentum"]).add_(d)
                p.add_(buf, alpha=-g["lr"])
        return loss


def build_optimizer(module: nn.Module, cfg: OptimConfig, fused: bool = False) -> torch.optim.Optimizer:
    """The optimizer over ``module``'s trainable parameters in the two I-JEPA groups. ``fused`` selects AdamW's
    fused implementation (ignored by LARS)."""
    decay, no_decay = split_decay(module)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay, "apply_wd": True},
        {"params": no_decay, "weight_decay": 0.0, "apply_wd": False},
    ]
    if cfg.name == "lars":
        groups[1]["lars"] = False
        return LARS(groups, lr=cfg.start_lr, momentum=cfg.momentum, eta=cfg.lars_eta)
    return torch.optim.AdamW(groups, lr=cfg.start_lr, betas=cfg.betas, eps=cfg.eps, fused=True if fused else None)


def set_implementation(opt: torch.optim.Optimizer, fused: bool) -> None:
    """Re-select AdamW's implementation after ``load_state_dict`` (which restores the saved groups' flags), so that
    ``train.fused_optimizer`` may change on resume."""
    if isinstance(opt, torch.optim.AdamW):
        for g in opt.param_groups:
            g["fused"] = True if fused else None
            g["foreach"] = None


def set_hyperparams(opt: torch.optim.Optimizer, lr: float, wd: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr
        if g.get("apply_wd", False):
            g["weight_decay"] = wd
