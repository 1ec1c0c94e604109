"""Position embeddings for patch grids: fixed 2D sin-cos tables and resizing of learned tables.

The sin-cos layout follows I-JEPA (Assran et al., CVPR 2023), which reuses the MAE table (He et al. 2022):
reference code ``src/models/vision_transformer.py:get_2d_sincos_pos_embed`` in facebookresearch/ijepa.
For a ``D``-channel table over an ``H x W`` grid (tokens in row-major order, ``n = row * W + col``):

* channels ``[0, D/2)`` encode the **column** of the token, channels ``[D/2, D)`` its **row**. The reference
  builds its grid with ``np.meshgrid(w, h)`` (``xy`` indexing), so its "first" coordinate is the column even
  though the variable holding its half is called ``emb_h``;
* each half is a 1D table of width ``D/2``: ``[sin(p * w_0..w_{D/4-1}), cos(p * w_0..w_{D/4-1})]`` with
  frequencies ``w_i = 10000 ** (-i / (D/4))``.

Hence ``D`` must be a multiple of 4. Tables are computed in float64 (as the reference does in numpy) and cast
at the end, so they match the reference to float32 rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def sincos_pos_embed_1d(embed_dim: int, positions: Tensor) -> Tensor:
    """1D sin-cos embedding of arbitrary (float) positions.

    Args:
        embed_dim: ``D``, even.
        positions: ``(M,)`` positions (any float dtype; computed in the dtype given).
    Returns:
        ``(M, D)``: ``[sin(p * w), cos(p * w)]`` with ``w_i = 10000 ** (-i / (D/2))``, ``i < D/2``.
        Reference: ``get_1d_sincos_pos_embed_from_grid``.
    """
    if embed_dim % 2 != 0:
        raise ValueError(f"1D sin-cos embedding needs an even width, got {embed_dim}")
    half = embed_dim // 2
    exponent = torch.arange(half, dtype=positions.dtype, device=positions.device) / half
    omega = 1.0 / (10000.0**exponent)  # (D/2,)
    angles = positions.reshape(-1, 1) * omega.reshape(1, -1)  # (M, D/2), outer product
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_pos_embed_2d(
    embed_dim: int,
    grid_hw: tuple[int, int],
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Fixed 2D sin-cos table for an ``H x W`` patch grid (no class token).

    Args:
        embed_dim: ``D``, a multiple of 4.
        grid_hw: ``(H, W)`` patches per column and per row; need not be square.
        dtype: output dtype (the table is always computed in float64 first).
        device: where to put it (it is computed on the CPU: float64 is not available on every accelerator).
    Returns:
        ``(H * W, D)``: row ``n = r * W + c`` is ``[emb_1d(c), emb_1d(r)]`` (column half first, see the
        module docstring). Equal (atol 1e-6) to ``get_2d_sincos_pos_embed(D, H)`` of the reference for H == W.
    """
    if embed_dim % 4 != 0:
        raise ValueError(f"2D sin-cos embedding needs a width divisible by 4, got {embed_dim}")
    H, W = grid_hw
    rows = torch.arange(H, dtype=torch.float64)
    cols = torch.arange(W, dtype=torch.float64)
    row_of_token = rows.repeat_interleave(W)  # (H*W,) row-major: r = n // W
    col_of_token = cols.repeat(H)  # (H*W,) c = n % W
    table = torch.cat(
        [
            sincos_pos_embed_1d(embed_dim // 2, col_of_token),
            sincos_pos_embed_1d(embed_dim // 2, row_of_token),
        ],
        dim=1,
    )
    return table.to(device=device, dtype=dtype)


def resize_pos_embed(pos_embed: Tensor, old_hw: tuple[int, int], new_hw: tuple[int, int]) -> Tensor:
    """Bicubic resize of a learned position table to another patch grid.

    Sin-cos tables should be recomputed with :func:`sincos_pos_embed_2d` instead (exact); this is for learned
    tables, e.g. timm checkpoints fine-tuned at another resolution (cf. ``interpolate_pos_encoding`` in the
    reference, which does the same with a class token).

    Args:
        pos_embed: ``(1, H_old * W_old, D)``, row-major.
        old_hw: ``(H_old, W_old)``.
        new_hw: ``(H_new, W_new)``.
    Returns:
        ``(1, H_new * W_new, D)`` in the dtype of ``pos_embed`` (the identity when the grids are equal).
    """
    _, N, D = pos_embed.shape
    if N != old_hw[0] * old_hw[1]:
        raise ValueError(f"position table has {N} entries, not {old_hw[0]} x {old_hw[1]}")
    if tuple(old_hw) == tuple(new_hw):
        return pos_embed
    # bicubic interpolation is not implemented for half types on every backend: go through float32
    grid = pos_embed.reshape(1, old_hw[0], old_hw[1], D).permute(0, 3, 1, 2).float()  # (1, D, H, W)
    grid = F.interpolate(grid, size=tuple(new_hw), mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(1, new_hw[0] * new_hw[1], D).to(pos_embed.dtype)
