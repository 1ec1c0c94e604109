"""Cross-process helpers for losses computed over the global batch (SimCLR's negatives, VICReg's covariance).

``all_gather_with_grad`` is the gather that contrastive and variance/covariance losses need when training on
several processes: every rank sees the embeddings of all ranks, and the gradient of its loss with respect to
another rank's embeddings is sent back to that rank. It is the "FullGatherLayer" of facebookresearch/vicreg
(``main_vicreg.py``) and the ``tpu_cross_replica_concat`` of google-research/simclr (``tf2/objective.py``); the
differentiable collective is torch's ``torch.distributed.nn.functional.all_gather`` (a reduce-scatter of the
gradients on NCCL, an all-to-all on gloo). On one process (or without ``torch.distributed``) every function is the
identity, so single-process code pays nothing.

Gradient convention: backward sums the incoming gradients over ranks and returns this rank's slice, i.e.
``d(sum_r loss_r) / d x_rank``. DDP then averages parameter gradients over ranks, so the parameters receive the
gradient of the mean of the per-rank losses -- the same as one process computing the loss on the global batch
when each rank's loss is a mean over its own anchors.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
from torch import Tensor


def is_distributed() -> bool:
    """True when ``torch.distributed`` is available and a process group is initialized."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Number of processes in the default group (1 without ``torch.distributed``)."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """This process's rank in the default group (0 without ``torch.distributed``)."""
    return dist.get_rank() if is_distributed() else 0


def all_gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` ``(B, ...)`` of every rank along dim 0: ``(world*B, ...)`` in rank order, differentiable.

    The gradient flowing back to ``x`` is the sum over ranks of each rank's gradient for these rows. Every rank
    must call it with the same ``B`` (drop-last batches) and must also run the backward pass. Identity on one
    process.
    """
    if world_size() == 1:
        return x
    return torch.cat(dist_nn.all_gather(x), dim=0)


def all_gather_no_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` ``(B, ...)`` of every rank along dim 0, detached: ``(world*B, ...)`` in rank order
    (e.g. targets or statistics that need no gradient). On one process: ``x.detach()``."""
    if world_size() == 1:
        return x.detach()
    x = x.detach().contiguous()
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x)  # the list form works on every backend (gloo included); order = rank order
    return torch.cat(parts, dim=0)


__all__ = ["all_gather_no_grad", "all_gather_with_grad", "is_distributed", "rank", "world_size"]
