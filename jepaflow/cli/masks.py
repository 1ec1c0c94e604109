"""Pictures of masks: images with their context and target patches, and where masks fall on the grid.

Helpers of the ``jepaflow masks`` command (the command itself lives with the other typer commands).
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from jepaflow.interfaces import MaskBatch
from jepaflow.maskers.stats import dense_masks

#: RGB of the context tint; target blocks take the tab10 colours, blue (the context's) left out.
CONTEXT_RGB = (0.12, 0.47, 0.71)
_TARGET_TAB10 = (1, 2, 3, 4, 5, 6, 8, 9)


def _displayable(image: Tensor):
    """``(C, H, W)`` float tensor (in [0, 1] or normalized) -> ``(H, W, 3)`` numpy array in [0, 1]."""
    x = image.detach().float().cpu()
    if x.shape[0] != 3:
        x = x[:1].expand(3, -1, -1)  # grey (and any other channel count: its first channel)
    lo, hi = x.min(), x.max()
    if lo < 0 or hi > 1:  # normalized input: stretch to [0, 1] for display only
        x = (x - lo) / (hi - lo).clamp_min(1e-8)
    return x.permute(1, 2, 0).numpy()


def render_masks(
    images: Tensor,
    masks: MaskBatch,
    grid_size: tuple[int, int],
    patch_size: int,
    path: str | Path,
    max_images: int = 8,
) -> Path:
    """Draw masks over their images and save a PNG.

    Top row: up to ``max_images`` images, context patches tinted blue, each target block tinted and outlined
    in its own colour (a patch in both shows the target colour), other patches dimmed. Bottom row: over the
    whole batch, the fraction of images in which each patch is in the context, and in some target.

    Args:
        images: ``(B, C, H, W)`` in [0, 1] or normalized (then stretched per image for display).
        masks: the batch's :class:`MaskBatch` (``*_valid`` honoured).
        grid_size: ``(H_p, W_p)`` patch grid; ``patch_size``: pixels per patch side.
        path: PNG file to write (parent folders are created).
    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    # A bare Figure renders through the Agg canvas and leaves pyplot's global state (and backend) alone.
    import matplotlib
    import numpy as np
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    Hp, Wp = grid_size
    ps = patch_size
    ctx, tgt = dense_masks(masks, grid_size)  # (B, N), (B, M, N)
    n = min(images.shape[0], max_images)
    M = tgt.shape[1]
    cmap = matplotlib.colormaps["tab10"]
    colours = [cmap(_TARGET_TAB10[m % len(_TARGET_TAB10)])[:3] for m in range(M)]

    ncols = max(n, 2)
    fig = Figure(figsize=(2.2 * ncols, 4.6))
    axes = fig.subplots(2, ncols, squeeze=False)
    for i in range(n):
        ax = axes[0, i]
        ax.imshow(_displayable(images[i]), extent=(0, Wp * ps, Hp * ps, 0), interpolation="nearest")
        # Patches in neither set are dimmed, so that what the context leaves out (e.g. the reference's
        # last row and column, or the bottom-right patches cut to the batch minimum) stands out.
        overlay = np.zeros((Hp, Wp, 4))
        overlay[..., 3] = 0.6
        overlay[ctx[i].view(Hp, Wp).numpy()] = (*CONTEXT_RGB, 0.35)
        for m in range(M):
            block = tgt[i, m].view(Hp, Wp)
            if not bool(block.any()):
                continue
            overlay[block.numpy()] = (*colours[m], 0.55)
            rows = block.any(dim=1).nonzero().flatten()
            cols = block.any(dim=0).nonzero().flatten()
            top, left = int(rows[0]), int(cols[0])
            h, w = int(rows[-1]) - top + 1, int(cols[-1]) - left + 1
            ax.add_patch(
                Rectangle(
                    (left * ps, top * ps), w * ps, h * ps, fill=False, edgecolor=colours[m], linewidth=1.5
                )
            )
        ax.imshow(overlay, extent=(0, Wp * ps, Hp * ps, 0), interpolation="nearest")
        ax.set_title(f"#{i}: ctx {int(ctx[i].sum())}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    for j in range(n, ncols):
        axes[0, j].axis("off")

    for j, (name, freq) in enumerate(
        (("context frequency", ctx.double().mean(0)), ("target frequency", tgt.any(1).double().mean(0)))
    ):
        ax = axes[1, j]
        im = ax.imshow(freq.view(Hp, Wp).numpy(), vmin=0, vmax=1, cmap="viridis", interpolation="nearest")
        ax.set_title(f"{name} (B={ctx.shape[0]})", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    for j in range(2, ncols):
        axes[1, j].axis("off")

    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    return out
