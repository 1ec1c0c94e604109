"""Gathers of patch tokens by index: the vectorized form of the official ``apply_masks``."""

from __future__ import annotations

from torch import Tensor


def gather_tokens(x: Tensor, idx: Tensor) -> Tensor:
    """Select tokens per batch row.

    Args:
        x: ``(B, N, D)`` tokens.
        idx: ``(B, K)`` int64 indices into ``N`` (or ``(B, M, K)``: one set per target block).
    Returns:
        ``(B, K, D)`` (or ``(B, M, K, D)``).
    """
    B, N, D = x.shape
    if idx.dim() == 2:
        return x.gather(1, idx.unsqueeze(-1).expand(-1, -1, D))
    flat = idx.reshape(B, -1)  # (B, M*K)
    out = x.gather(1, flat.unsqueeze(-1).expand(-1, -1, D))
    return out.reshape(*idx.shape, D)
