"""Fixed 2D sin-cos position embeddings for patch grids (learned tables are resized by timm's
``resample_abs_pos_embed``; sin-cos tables are recomputed for a new grid, which is exact).

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
