"""Stripe masking: predict whole rows (or columns) of patches from the rest of the image.

Each image gets ``num_targets`` target stripes, each ``stripe_width`` patch rows tall and the full grid
width (or, vertical, ``stripe_width`` columns wide and the full grid height). Stripes of one image never
overlap (they may touch), and their placement is uniform over all non-overlapping placements. The context
is every patch outside the stripes, or a random subset of those patches of ``context_ratio`` of the grid,
the same count for every image.

Compared with I-JEPA's multi-block masks (Assran et al., CVPR 2023, arXiv 2301.08243, section 3), a stripe
cuts the image in two, so the predictor must carry information across the whole width of the image rather
than around a local block.

Everything is batched: no Python loop over images, every random number from the ``generator`` argument.
"""

from __future__ import annotations

from typing import Literal

import torch
from jepaflow.errors import JepaflowError
from jepaflow.interfaces import MaskBatch, Masker, PluginConfig
from pydantic import Field
from torch import Tensor

Orientation = Literal["horizontal", "vertical", "random"]


class StripeMaskerConfig(PluginConfig):
    """Settings of :class:`StripeMasker` (the fields of the recipe's ``masker:`` section besides ``name``)."""

    num_targets: int = Field(2, ge=1, description="target stripes per image; each is one target block")
    stripe_width: int = Field(2, ge=1, description="patch rows (horizontal) or columns (vertical) per stripe")
    orientation: Orientation = Field(
        "horizontal",
        description="horizontal: full-width rows; vertical: full-height columns; random: either, per image",
    )
    context_ratio: float | None = Field(
        None,
        gt=0,
        le=1,
        description="context = this fraction of the grid, drawn at random outside the stripes (capped at the "
        "number of non-target patches); None: every patch outside the stripes",
    )


# -------------------------------------------------------------------------------------------- pure functions
def sample_stripe_starts(
    lines: Tensor, max_lines: int, num_targets: int, stripe_width: int, generator: torch.Generator
) -> Tensor:
    """First line of each of ``M`` non-overlapping stripes, uniform over all placements.

    A placement of ``M`` stripes of width ``w`` in ``L`` lines, with no overlap, is the same thing as a choice
    of ``M`` distinct slots among ``L - M (w - 1)``: sort the slots and shift the ``m``-th by ``m (w - 1)``.
    A uniformly random ``M``-subset is the ``M`` smallest of i.i.d. uniform scores.

    Args:
        lines: ``(B,)`` int64, lines available per image (rows for horizontal stripes, columns for vertical).
        max_lines: an upper bound of ``lines`` known on the host (the larger grid side), so that no size is
            read back from a tensor.
        num_targets: ``M``.
        stripe_width: ``w``.
        generator: source of every random number.
    Returns:
        ``(B, M)`` int64 start lines, ascending along ``M``.
    """
    M, w = num_targets, stripe_width
    slots = lines - M * (w - 1)  # (B,)
    max_slots = max_lines - M * (w - 1)
    scores = torch.rand(lines.shape[0], max_slots, generator=generator)
    # Slots past an image's own count (random orientation on a non-square grid) must never be picked.
    beyond = torch.arange(max_slots) >= slots[:, None]
    scores = scores.masked_fill(beyond, 2.0)
    chosen = scores.topk(M, dim=1, largest=False).indices.sort(dim=1).values  # (B, M)
    return chosen + torch.arange(M) * (w - 1)


def stripe_target_indices(
    starts: Tensor, vertical: Tensor, stripe_width: int, grid_size: tuple[int, int], orientation: Orientation
) -> tuple[Tensor, Tensor | None]:
    """Row-major patch indices of every stripe.

    Args:
        starts: ``(B, M)`` first line of each stripe.
        vertical: ``(B,)`` bool, True where the image's stripes are columns.
        stripe_width: ``w``.
        grid_size: ``(H, W)`` patches.
        orientation: the config's orientation; with "random" both orientations can occur in a batch.
    Returns:
        ``(targets, valid)``: ``(B, M, K)`` int64 indices, ascending, with ``K = w * W`` (horizontal) or
        ``w * H`` (vertical). When both orientations can occur on a non-square grid, ``K`` is the larger one
        for every batch (so that batches have one shape), ``valid`` ``(B, M, K)`` marks the real entries and
        padding holds index 0; otherwise ``valid`` is None.
    """
    H, W = grid_size
    w = stripe_width
    # K from the config, not from `vertical`, so that every batch has the same shape and nothing is read back.
    lengths = {"horizontal": W, "vertical": H, "random": max(H, W)}
    K = w * lengths[orientation]
    padded = orientation == "random" and H != W
    k = torch.arange(K)
    s = starts[:, :, None]  # (B, M, 1)
    # Horizontal: w full rows from `start`; vertical: w columns from `start` in every row. Both row-major.
    horizontal_idx = (s + k // W) * W + k % W
    vertical_idx = (k // w) * W + s + k % w
    idx = torch.where(vertical[:, None, None], vertical_idx, horizontal_idx)
    if not padded:
        return idx, None
    length = torch.where(vertical, H, W)  # (B,)
    valid = (k < w * length[:, None, None]).expand_as(idx).contiguous()
    return torch.where(valid, idx, 0), valid


def stripe_membership(
    starts: Tensor, vertical: Tensor, stripe_width: int, grid_size: tuple[int, int]
) -> Tensor:
    """``(B, N)`` bool: True for patches inside one of the image's stripes (``starts`` is ``(B, M)``)."""
    H, W = grid_size
    n = torch.arange(H * W)
    line = torch.where(vertical[:, None], n % W, n // W)  # (B, N): the coordinate the stripes cut along
    inside = (line[:, :, None] >= starts[:, None, :]) & (line[:, :, None] < starts[:, None, :] + stripe_width)
    return inside.any(dim=-1)


def context_indices(
    in_target: Tensor, keep: int, generator: torch.Generator | None
) -> Tensor:
    """``(B, keep)`` ascending indices of patches outside the targets.

    With a ``generator`` the ``keep`` patches are a uniform random subset of each image's non-target patches;
    without, the first ``keep`` of them in row-major order (all of them when ``keep`` is their count).
    With a generator ``keep`` must not exceed any image's number of non-target patches; without, entries past
    an image's count are target patches, to be masked out by the caller.
    """
    B, N = in_target.shape
    if generator is None:
        # Non-targets first, each group in index order: the first `keep` are already ascending, and when
        # `keep` exceeds an image's non-target count its extra (padding) entries are at the end, where the
        # caller's valid mask expects them.
        key = in_target.to(torch.int64) * N + torch.arange(N)
        return key.argsort(dim=1)[:, :keep]
    key = in_target.to(torch.float32) * 2.0 + torch.rand(B, N, generator=generator)
    return key.argsort(dim=1)[:, :keep].sort(dim=1).values


def non_target_counts(
    grid_size: tuple[int, int], num_targets: int, stripe_width: int, orientation: Orientation
) -> dict[str, int]:
    """Patches left outside the stripes, per orientation the config can produce (host ints)."""
    H, W = grid_size
    cover = {"horizontal": num_targets * stripe_width * W, "vertical": num_targets * stripe_width * H}
    used = ["horizontal", "vertical"] if orientation == "random" else [orientation]
    return {o: H * W - cover[o] for o in used}


# ------------------------------------------------------------------------------------------------ module
class StripeMasker(Masker):
    """Masks ``num_targets`` full-width (or full-height) stripes of patches per image as targets.

    Targets are ``stripe_width`` patch rows (horizontal) or columns (vertical) spanning the grid, placed at
    random without overlap; the context is the rest of the grid, or a random ``context_ratio`` of it.

    ``__call__(batch_size, grid_size, generator)`` returns a :class:`~jepaflow.interfaces.MaskBatch` with
    ``context`` ``(B, K_ctx)`` and ``targets`` ``(B, num_targets, K_tgt)``, where ``K_tgt`` is
    ``stripe_width * W`` (horizontal) or ``stripe_width * H`` (vertical). Padding (and the ``*_valid`` masks)
    only appears with ``orientation: random`` on a non-square grid.
    """

    Config = StripeMaskerConfig

    def __init__(self, config: StripeMaskerConfig):
        self.config = config

    def check(self, grid_size: tuple[int, int]) -> None:
        """Raise a :class:`~jepaflow.errors.JepaflowError` if the stripes cannot fit the grid with some
        context left. The engine calls it once before the DataLoader starts (so the error is reported from
        the main process); ``__call__`` calls it too, as it is only a few integer comparisons."""
        cfg = self.config
        H, W = grid_size
        lines = {"horizontal": f"{H} rows", "vertical": f"{W} columns"}
        left = non_target_counts(grid_size, cfg.num_targets, cfg.stripe_width, cfg.orientation)
        for orient, n_left in left.items():
            if n_left < 1:
                raise JepaflowError(
                    f"masker stripes: {cfg.num_targets} {orient} stripes of width {cfg.stripe_width} cover "
                    f"all {lines[orient]} of the {H}x{W} patch grid, leaving no context",
                    "lower masker.num_targets or masker.stripe_width (num_targets * stripe_width must be "
                    "smaller than the number of patch rows/columns)",
                )

    def context_size(self, grid_size: tuple[int, int]) -> int:
        """``K_ctx``: the context length of every batch on this grid."""
        cfg = self.config
        H, W = grid_size
        counts = non_target_counts(grid_size, cfg.num_targets, cfg.stripe_width, cfg.orientation)
        if cfg.context_ratio is None:
            return max(counts.values())
        return min(max(1, round(cfg.context_ratio * H * W)), min(counts.values()))

    def __call__(self, batch_size: int, grid_size: tuple[int, int], generator: torch.Generator) -> MaskBatch:
        cfg = self.config
        H, W = int(grid_size[0]), int(grid_size[1])
        grid_size = (H, W)
        self.check(grid_size)

        if cfg.orientation == "random":
            vertical = torch.rand(batch_size, generator=generator) < 0.5
        else:
            vertical = torch.full((batch_size,), cfg.orientation == "vertical")
        lines = torch.where(vertical, W, H)
        starts = sample_stripe_starts(lines, max(H, W), cfg.num_targets, cfg.stripe_width, generator)
        targets, targets_valid = stripe_target_indices(
            starts, vertical, cfg.stripe_width, grid_size, cfg.orientation
        )
        in_target = stripe_membership(starts, vertical, cfg.stripe_width, grid_size)

        keep = self.context_size(grid_size)
        context_valid = None
        if cfg.context_ratio is None:
            context = context_indices(in_target, keep, generator=None)
            n_ctx = H * W - in_target.sum(dim=1)  # (B,) differs only for random orientation, non-square grid
            if targets_valid is not None:
                context_valid = torch.arange(keep) < n_ctx[:, None]
                context = torch.where(context_valid, context, 0)
        else:
            context = context_indices(in_target, keep, generator=generator)
        return MaskBatch(
            context=context, targets=targets, context_valid=context_valid, targets_valid=targets_valid
        )
