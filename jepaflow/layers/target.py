"""Target networks: a frozen copy of an online network, kept out of training mode, moved only by an EMA.

Used by every method with a target (teacher) network: I-JEPA's target encoder (Assran et al., CVPR 2023,
sec. 3; facebookresearch/ijepa ``src/train.py``: ``target_encoder = copy.deepcopy(encoder)``, no gradient,
``param_k.mul_(m).add_((1.-m) * param_q)``), BYOL's target encoder and projector (Grill et al., NeurIPS 2020,
sec. 3.1) and data2vec's teacher (Baevski et al., ICML 2022, sec. 3.2; timm ``ModelEmaV2``, kept in eval mode).

* :func:`frozen_copy` -- the target at step 0: an exact copy of the online module, no gradients, eval mode.
* :class:`TargetNetworksMixin` -- an objective mixin: whatever ``objective.train(mode)`` asks, the targets named by
  its ``target_pairs()`` stay in eval mode, so stochastic depth and dropout never perturb the targets (a target
  whose encoder has ``drop_path_rate > 0`` would otherwise sample a different sub-network at every step). A
  method whose official code uses batch statistics in its target (BYOL) sets ``target_batch_stats = True``: its
  BatchNorm layers then follow ``mode`` and everything else stays in eval.
* :func:`ema_update_` -- ``target <- m * target + (1 - m) * online`` over the parameters of module pairs (buffers
  stay the target's own, as in the official I-JEPA code, which averages ``parameters()`` only).
"""

from __future__ import annotations

import copy
from typing import ClassVar

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def frozen_copy(online: nn.Module) -> nn.Module:
    """A deep copy of ``online`` with ``requires_grad=False`` everywhere, in eval mode."""
    return copy.deepcopy(online).requires_grad_(False).eval()


def set_target_mode_(target: nn.Module, mode: bool = False, batch_stats: bool = False) -> nn.Module:
    """Put ``target`` in eval mode; with ``batch_stats``, its BatchNorm layers follow ``mode`` instead (train mode:
    batch statistics and running-average updates, as BYOL's target). Returns ``target``."""
    target.eval()
    if batch_stats and mode:
        for m in target.modules():
            if isinstance(m, _BatchNorm):
                m.train()
    return target


class TargetNetworksMixin:
    """Mixin for an :class:`~jepaflow.interfaces.Objective` with target networks (listed by ``target_pairs()``):
    ``train(mode)`` switches the objective as usual, then puts every target back in eval mode (see
    :func:`set_target_mode_`). Put it before ``Objective`` in the bases: ``class X(TargetNetworksMixin, Objective)``.
    """

    #: True: the targets' BatchNorm layers use batch statistics in training (BYOL's official code); False: eval.
    target_batch_stats: ClassVar[bool] = False

    def train(self, mode: bool = True):
        # nn.Module.train, except that the targets are set once, to their own mode (the engine calls this every
        # step: no second pass over a large target network)
        targets = [t for _, t in self.target_pairs()]  # type: ignore[attr-defined]
        self.training = mode
        for child in self.children():  # type: ignore[attr-defined]
            if not any(child is t for t in targets):
                child.train(mode)
        for target in targets:  # after the others: a target nested in another child is set last
            set_target_mode_(target, mode, self.target_batch_stats)
        return self


@torch.no_grad()
def ema_update_(pairs: list[tuple[nn.Module, nn.Module]], momentum: float) -> None:
    """``target <- momentum * target + (1 - momentum) * online`` for the parameters of every ``(online, target)``
    pair, in place, fused over all tensors (one ``torch._foreach_lerp_``, no per-parameter Python work on the
    device). The two modules of a pair must have the same parameters in the same order."""
    online: list[torch.Tensor] = []
    target: list[torch.Tensor] = []
    for o, t in pairs:
        op, tp = list(o.parameters()), list(t.parameters())
        if len(op) != len(tp):
            raise RuntimeError(f"online/target parameter lists differ ({len(op)} vs {len(tp)})")
        online += [p.detach() for p in op]
        target += tp
    if online:
        torch._foreach_lerp_(target, online, 1.0 - momentum)


__all__ = ["frozen_copy", "set_target_mode_", "TargetNetworksMixin", "ema_update_"]
