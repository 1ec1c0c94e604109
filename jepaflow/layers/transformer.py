"""Running a stack of pre-norm transformer blocks over patch tokens, shared by the ViT-style encoders."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from jepaflow.layers.masking import gather_tokens


def key_padding_attn_mask(valid: Tensor | None) -> Tensor | None:
    """SDPA boolean mask that hides padded keys.

    Args:
        valid: ``(B, L)`` bool, False for padding; or None.
    Returns:
        ``(B, 1, 1, L)`` bool (True = may be attended to), broadcast over heads and queries; None for None.
        Only keys are masked: a padded query still attends to the valid keys, so its (discarded) output stays
        finite, and valid tokens never see padding.
    """
    if valid is None:
        return None
    return valid[:, None, None, :].to(torch.bool)


def encode_tokens(x: Tensor, blocks: nn.ModuleList, norm: nn.Module, keep: Tensor | None = None,
                  keep_valid: Tensor | None = None) -> Tensor:
    """Embedded tokens ``(B, N, D)`` (positions already added) -> kept tokens ``(B, K, D)`` after the blocks and the
    final norm. ``keep`` ``(B, K)`` gathers after positions were added (reference ``forward``: ``x + pos_embed``
    then ``apply_masks``); ``keep_valid`` ``(B, K)`` hides padded entries as keys."""
    if keep is not None:
        x = gather_tokens(x, keep)
    attn_mask = key_padding_attn_mask(keep_valid)
    for block in blocks:
        x = block(x, attn_mask=attn_mask)
    return norm(x)


def last_block_outputs(x: Tensor, blocks: nn.ModuleList, layers: int) -> list[Tensor]:
    """Outputs ``(B, N, D)`` of the last ``layers`` blocks (oldest first, before any final norm)."""
    depth = len(blocks)
    if not 1 <= layers <= depth:
        raise ValueError(f"layers must be in [1, {depth}], got {layers}")
    outputs: list[Tensor] = []
    for i, block in enumerate(blocks):
        x = block(x)
        if i >= depth - layers:
            outputs.append(x)
    return outputs
