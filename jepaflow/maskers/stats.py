"""Summary statistics of masks: how large the context is, where context and targets fall on the grid.

Used by ``jepaflow masks`` and by docs/maskers.md to compare maskers (e.g. the two modes of
:class:`~jepaflow.maskers.multiblock.MultiBlockMasker` with the reference collator of facebookresearch/ijepa
``src/masks/multiblock.py``). Pure functions of index tensors; padding is ignored through the ``*_valid`` masks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from jepaflow.interfaces import MaskBatch


def dense_masks(masks: MaskBatch, grid_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Index lists to boolean patch masks.

    Args:
        masks: context ``(B, K_ctx)``, targets ``(B, M, K_tgt)`` and their optional ``*_valid``.
        grid_size: ``(H, W)``; ``N = H * W``.
    Returns:
        ``(context (B, N) bool, targets (B, M, N) bool)``.
    """
    N = grid_size[0] * grid_size[1]
    ctx, tgt = masks.context, masks.targets
    ctx_valid = (
        masks.context_valid if masks.context_valid is not None else torch.ones_like(ctx, dtype=torch.bool)
    )
    tgt_valid = (
        masks.targets_valid if masks.targets_valid is not None else torch.ones_like(tgt, dtype=torch.bool)
    )
    # scatter_add of counts, not scatter of booleans: padding (index 0, invalid) must not overwrite a real
    # entry at index 0, and duplicate-index scatter order is unspecified.
    ctx_hits = torch.zeros(ctx.shape[0], N, dtype=torch.int32, device=ctx.device)
    ctx_hits.scatter_add_(1, ctx, ctx_valid.to(torch.int32))
    tgt_hits = torch.zeros(*tgt.shape[:2], N, dtype=torch.int32, device=tgt.device)
    tgt_hits.scatter_add_(2, tgt, tgt_valid.to(torch.int32))
    return ctx_hits > 0, tgt_hits > 0


def mask_statistics(masks: MaskBatch | Sequence[MaskBatch], grid_size: tuple[int, int]) -> dict[str, Any]:
    """Statistics of one batch of masks, or of several batches pooled image by image.

    Args:
        masks: a :class:`MaskBatch` or a sequence of them (same grid, same number of target blocks).
        grid_size: ``(H, W)`` patch grid.
    Returns:
        A dict with

        * ``num_images``: images pooled;
        * ``context_mean``, ``context_min``, ``context_max``: valid context patches per image;
        * ``target_mean``: valid patches per target block; ``target_union_mean``: patches in the union of an
          image's targets;
        * ``target_coverage``: mean fraction of the grid in the union of an image's targets;
        * ``overlap``: fraction of (union-of-targets) patches that are also in the context, pooled over images
          (0 when the masker keeps them disjoint);
        * ``context_freq``, ``target_freq``: ``(H, W)`` float tensors, fraction of images in which each patch is
          in the context / in some target;
        * ``never_context``, ``never_target``, ``never_context_or_target``: number of grid patches never in the
          context, never in a target, in neither.

        Scalars are Python numbers (this runs on the host, off the training path).
    """
    batches = [masks] if isinstance(masks, MaskBatch) else list(masks)
    if not batches:
        raise ValueError("mask_statistics needs at least one MaskBatch")
    H, W = grid_size
    dense = [dense_masks(m, grid_size) for m in batches]
    ctx = torch.cat([c for c, _ in dense]).cpu()  # (B, N)
    tgt = torch.cat([t for _, t in dense]).cpu()  # (B, M, N)
    tgt_union = tgt.any(dim=1)  # (B, N)

    ctx_count = ctx.sum(dim=1).double()
    union_count = tgt_union.sum(dim=1).double()
    shared = (ctx & tgt_union).sum().double()
    ctx_freq = ctx.double().mean(dim=0).view(H, W)
    tgt_freq = tgt_union.double().mean(dim=0).view(H, W)
    return {
        "num_images": ctx.shape[0],
        "context_mean": float(ctx_count.mean()),
        "context_min": int(ctx_count.min()),
        "context_max": int(ctx_count.max()),
        "target_mean": float(tgt.sum(dim=2).double().mean()),
        "target_union_mean": float(union_count.mean()),
        "target_coverage": float(union_count.mean() / (H * W)),
        "overlap": float(shared / union_count.sum().clamp_min(1)),
        "context_freq": ctx_freq,
        "target_freq": tgt_freq,
        "never_context": int((ctx_freq == 0).sum()),
        "never_target": int((tgt_freq == 0).sum()),
        "never_context_or_target": int(((ctx_freq == 0) & (tgt_freq == 0)).sum()),
    }
