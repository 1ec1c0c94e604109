"""Multi-block masking: a few rectangular target blocks and one large context block per image.

I-JEPA (Assran et al., CVPR 2023, arXiv 2301.08243, section 3 and figure 4) predicts ``M`` target blocks
(scale 0.15-0.2, aspect 0.75-1.5) from a context block (scale 0.85-1.0, square) from which the targets are
removed. The reference sampler is facebookresearch/ijepa ``src/masks/multiblock.py:MaskCollator``.

Two modes:

``official``
    The reference collator's rules, quirks included, so that a run can be compared with the paper's code:

    * one uniform draw per batch sets *both* the scale and the aspect ratio of the target blocks (they move
      together), and another one the context block size; every image of the batch shares both sizes
      (``MaskCollator._sample_block_size``);
    * ``n = int(H * W * scale)``, ``h = round(sqrt(n * ar))``, ``w = round(sqrt(n / ar))``, each shrunk while
      it is ``>=`` the grid side (so a block never spans a whole row or column);
    * top-left corners are drawn from ``[0, H - h)`` and ``[0, W - w)`` (exclusive, so a block never touches
      the last row or column: with a square grid of side ``S``, the context block is ``(S-1) x (S-1)`` at
      ``(0, 0)`` for every image);
    * the context block is restricted to the complement of the targets; a block of ``min_keep`` patches or
      fewer is redrawn, and after every 20 failed draws one more target (the last ones first) stops
      constraining the context (``MaskCollator._sample_block_mask``: ``tries``/``timeout``);
    * index lists are sorted ascending (row-major) and cut to the batch minimum *from the end*, which drops the
      bottom-right patches of the larger contexts (``MaskCollator.__call__``).

``fixed``
    The same family of masks with the quirks removed: scale and aspect ratio are drawn independently (both
    uniform, as the reference draws them) per image and per block; corners range over ``[0, H - h]``
    inclusive, so every patch can be covered; the context is its block minus the union of the targets, kept
    whole (padded, with ``context_valid``) or randomly subsampled to the batch minimum; targets are padded to
    the batch maximum with ``targets_valid``.

Where the reference samples per image in Python, here every draw is batched: corners for all images and
blocks at once, masks as ``(B, M, H, W)`` boolean tensors built by broadcasting comparisons, and only the rows
that fail a data-dependent test are drawn again. Every random number comes from the ``generator`` argument.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field, field_validator, model_validator
from torch import Tensor

from jepaflow.errors import JepaflowError
from jepaflow.fields import MAX_IMAGE_SIZE
from jepaflow.interfaces import MaskBatch, Masker, PluginConfig

#: failed context draws before the reference sampler lets one more target stop constraining the context
#: (``MaskCollator._sample_block_mask``: ``timeout = og_timeout = 20``).
OFFICIAL_RETRIES_PER_RELAXATION = 20

#: rounds of redraws after which the fixed mode gives up (a recipe whose blocks can hardly ever be valid).
FIXED_MAX_ROUNDS = 1000

#: uniform draws used to enumerate the block sizes a configuration can produce on a grid (``check_grid``).
_SIZE_PROBES = 4096


# ------------------------------------------------------------------------------------------------ pure functions
def official_block_size(
    u: float, scale: tuple[float, float], aspect: tuple[float, float], grid_size: tuple[int, int]
) -> tuple[int, int]:
    """Block height and width for one uniform draw ``u`` in [0, 1), by the reference rule.

    The same ``u`` interpolates both the scale and the aspect ratio (so large blocks are always the tall ones);
    ``n = int(H*W*scale)`` patches, ``h = round(sqrt(n*ar))``, ``w = round(sqrt(n/ar))``, each decreased while
    it is ``>=`` the grid side. Python's ``round`` (half to even) as in the reference.
    Reference: facebookresearch/ijepa ``src/masks/multiblock.py:MaskCollator._sample_block_size``.
    """
    H, W = grid_size
    s = scale[0] + u * (scale[1] - scale[0])
    ar = aspect[0] + u * (aspect[1] - aspect[0])
    n = int(H * W * s)
    h = int(round(math.sqrt(n * ar)))
    w = int(round(math.sqrt(n / ar)))
    # "while h >= H: h -= 1" in one step. A zero side is kept (the reference would loop forever on it, and
    # _raise_if_never_valid says so).
    return max(min(h, H - 1), 0), max(min(w, W - 1), 0)


def official_reachable_sizes(
    scale: tuple[float, float],
    aspect: tuple[float, float],
    grid_size: tuple[int, int],
    probes: int = _SIZE_PROBES,
) -> set[tuple[int, int]]:
    """The ``(h, w)`` block sizes :func:`official_block_size` returns over ``probes`` evenly spaced draws."""
    us = [(i + 0.5) / probes for i in range(probes)] + [0.0]
    return {official_block_size(u, scale, aspect, grid_size) for u in us}


def fixed_block_sizes(scale: Tensor, aspect: Tensor, grid_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Block heights and widths for per-block scales and aspect ratios (any equal shapes), fixed mode.

    ``h = round(sqrt(H*W*scale*ar))``, ``w = round(sqrt(H*W*scale/ar))``, clamped to ``[1, H]`` and ``[1, W]``:
    unlike the reference a block may span the whole grid (scale 1.0 is the full image).
    """
    H, W = grid_size
    n = H * W * scale
    h = torch.sqrt(n * aspect).round().clamp(1, H).long()
    w = torch.sqrt(n / aspect).round().clamp(1, W).long()
    return h, w


def block_masks(
    top: Tensor, left: Tensor, height: Tensor | int, width: Tensor | int, grid_size: tuple[int, int]
) -> Tensor:
    """Rectangles as boolean masks, by broadcasting comparisons.

    Args:
        top, left: ``(*S)`` int64 top-left corners (patch units).
        height, width: ``(*S)`` int64 (or ints shared by all blocks).
        grid_size: ``(H, W)``.
    Returns:
        ``(*S, H, W)`` bool, True inside ``[top, top+height) x [left, left+width)``.
    """
    H, W = grid_size
    rows = torch.arange(H, device=top.device).view(H, 1)
    cols = torch.arange(W, device=top.device).view(1, W)
    t, lft = top[..., None, None], left[..., None, None]
    h = height[..., None, None] if isinstance(height, Tensor) else height
    w = width[..., None, None] if isinstance(width, Tensor) else width
    # rows and columns apart ((*S, H, 1) and (*S, 1, W)), then one broadcast AND to the full (*S, H, W)
    return ((rows >= t) & (rows < t + h)) & ((cols >= lft) & (cols < lft + w))


def first_indices(mask: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` smallest True positions of each row of ``mask``, ascending, padded with index 0.

    Args:
        mask: ``(*S, N)`` bool.
        k: number of indices per row (rows with fewer True entries are padded).
    Returns:
        ``(indices (*S, k) int64, valid (*S, k) bool)``; ``valid`` is False on padding.
    """
    *lead, N = mask.shape
    flat = mask.reshape(-1, N)
    # Each True entry's rank within its row (a running count), then one scatter: linear in N, no sort.
    rank = flat.cumsum(dim=-1) - 1  # (R, N)
    rows, cols = (flat & (rank < k)).nonzero(as_tuple=True)  # row-major: ascending positions per row
    slot = rank[rows, cols]
    indices = torch.zeros(flat.shape[0], k, dtype=torch.long, device=mask.device)
    valid = torch.zeros(flat.shape[0], k, dtype=torch.bool, device=mask.device)
    indices[rows, slot] = cols
    valid[rows, slot] = True
    return indices.reshape(*lead, k), valid.reshape(*lead, k)


def rectangle_indices(
    top: Tensor, left: Tensor, height: Tensor, width: Tensor, grid_width: int, k: int
) -> tuple[Tensor, Tensor]:
    """Row-major patch indices of rectangles, ascending, padded to ``k`` with index 0: the same as
    ``first_indices(block_masks(...).flatten(-2), k)``, computed from the corners without building the masks.

    Args:
        top, left, height, width: ``(*S)`` int64 (heights and widths >= 1).
    Returns:
        ``(indices (*S, k) int64, valid (*S, k) bool)``.
    """
    p = torch.arange(k, device=top.device)  # position within the block, row by row
    w = width[..., None]
    indices = (top[..., None] + p // w) * grid_width + left[..., None] + p % w
    valid = p < (height * width)[..., None]
    return torch.where(valid, indices, torch.zeros_like(indices)), valid


def random_subset_indices(mask: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """``k`` True positions of each row of ``mask`` chosen uniformly at random, returned ascending.

    Args:
        mask: ``(B, N)`` bool with at least ``k`` True entries per row.
    Returns:
        ``(B, k)`` int64.
    """
    noise = torch.rand(mask.shape, generator=generator, device=mask.device)
    key = torch.where(mask, noise, torch.full_like(noise, 2.0))  # non-members sort after every member
    chosen = key.topk(k, dim=-1, largest=False).indices
    return chosen.sort(dim=-1).values


def _uniform(lo_hi: tuple[float, float], shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    lo, hi = lo_hi
    return lo + (hi - lo) * torch.rand(shape, generator=generator)


def _fixed_draw_blocks(
    shape: tuple[int, ...],
    scale: tuple[float, float],
    aspect: tuple[float, float],
    grid_size: tuple[int, int],
    generator: torch.Generator,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Independent size and corner per block (fixed mode). Returns ``top, left, h, w``, each ``shape``."""
    H, W = grid_size
    h, w = fixed_block_sizes(_uniform(scale, shape, generator), _uniform(aspect, shape, generator), grid_size)
    # Corners uniform over [0, H - h] inclusive: every row, the last one included, can be covered.
    top = (torch.rand(shape, generator=generator) * (H - h + 1)).long().clamp_max(H - h)
    left = (torch.rand(shape, generator=generator) * (W - w + 1)).long().clamp_max(W - w)
    return top, left, h, w


# ------------------------------------------------------------------------------------------------ samplers
def sample_official(
    cfg: MultiBlockMasker.Config, batch_size: int, grid_size: tuple[int, int], generator: torch.Generator
) -> MaskBatch:
    """Reference-rule masks; see the module docstring. Returns a :class:`MaskBatch` without padding."""
    H, W = grid_size
    B, M, C = batch_size, cfg.num_targets, cfg.num_context
    # Two draws, targets first, as in MaskCollator.__call__ (p_size, then e_size).
    u_tgt = float(torch.rand(1, generator=generator))
    u_ctx = float(torch.rand(1, generator=generator))
    th, tw = official_block_size(u_tgt, cfg.target_scale, cfg.target_aspect, grid_size)
    ch, cw = official_block_size(u_ctx, cfg.context_scale, cfg.context_aspect, grid_size)
    _raise_if_never_valid(cfg, grid_size, {(th, tw)}, {(ch, cw)})

    # Targets: unconstrained, so each draw is valid (h*w > min_keep, checked above): no retry loop.
    t_top = torch.randint(0, H - th, (B, M), generator=generator)
    t_left = torch.randint(0, W - tw, (B, M), generator=generator)
    # A rectangle's row-major indices are already ascending: (top + i) * W + left + j.
    rr = torch.arange(th).view(th, 1)
    cc = torch.arange(tw).view(1, tw)
    targets = ((t_top[..., None, None] + rr) * W + t_left[..., None, None] + cc).flatten(-2)  # (B, M, th*tw)

    # Context blocks: rejection with the reference's per-block relaxation schedule, redrawing only failures.
    ctx = torch.zeros(B, C, H, W, dtype=torch.bool)
    failed = torch.zeros(B, C, dtype=torch.long)  # failed draws so far, per context block
    pending = torch.ones(B, C, dtype=torch.bool)
    tgt_masks = None if cfg.allow_overlap else block_masks(t_top, t_left, th, tw, grid_size)  # (B, M, H, W)
    tgt_union = None if tgt_masks is None else tgt_masks.any(dim=1)  # (B, H, W): all targets constrain
    while bool(pending.any()):
        b, c = pending.nonzero(as_tuple=True)
        P = b.numel()
        top = torch.randint(0, H - ch, (P,), generator=generator)
        left = torch.randint(0, W - cw, (P,), generator=generator)
        block = block_masks(top, left, ch, cw, grid_size)  # (P, H, W)
        if tgt_masks is not None:
            # Only the first M - tries targets constrain the context (constrain_mask(mask, tries)).
            tries = failed[b, c] // OFFICIAL_RETRIES_PER_RELAXATION
            forbidden = tgt_union[b]  # (P, H, W), right for every row that has not been relaxed yet
            relaxed = (tries > 0).nonzero(as_tuple=True)[0]
            if relaxed.numel() > 0:
                active = torch.arange(M) < (M - tries[relaxed]).unsqueeze(1)  # (R, M)
                forbidden[relaxed] = (tgt_masks[b[relaxed]] & active[:, :, None, None]).any(dim=1)
            block &= ~forbidden
        ok = block.flatten(1).sum(dim=1) > cfg.min_keep
        ctx[b[ok], c[ok]] = block[ok]
        pending[b[ok], c[ok]] = False
        failed[b[~ok], c[~ok]] += 1

    # Several context blocks (not used by I-JEPA) are merged into one context set; see docs/maskers.md.
    ctx_flat = ctx.any(dim=1).flatten(1)  # (B, N)
    k_ctx = int(ctx_flat.sum(dim=1).min())
    # Cut to the batch minimum keeping the first (top-left-most) indices: cm[:min_keep_enc] in the reference.
    context, _ = first_indices(ctx_flat, k_ctx)
    return MaskBatch(context=context, targets=targets)


def sample_fixed(
    cfg: MultiBlockMasker.Config, batch_size: int, grid_size: tuple[int, int], generator: torch.Generator
) -> MaskBatch:
    """Per-image, per-block sizes over the full placement range; padded outputs; see the module docstring."""
    H, W = grid_size
    B, M, C = batch_size, cfg.num_targets, cfg.num_context

    def draw_targets(shape: tuple[int, ...]) -> tuple[Tensor, ...]:
        return _fixed_draw_blocks(shape, cfg.target_scale, cfg.target_aspect, grid_size, generator)

    # Targets: a block of min_keep patches or fewer is redrawn (size and place), only the failing ones.
    t_top, t_left, t_h, t_w = draw_targets((B, M))
    for _ in range(FIXED_MAX_ROUNDS):
        bad = t_h * t_w <= cfg.min_keep
        if not bool(bad.any()):
            break
        redraw = draw_targets((int(bad.sum()),))
        for full, new in zip((t_top, t_left, t_h, t_w), redraw, strict=True):
            full[bad] = new
    else:
        _give_up("target", cfg, grid_size)
    tgt_masks = block_masks(t_top, t_left, t_h, t_w, grid_size)  # (B, M, H, W)

    # Context: union of its blocks minus the targets; too small -> redraw the context blocks of that image,
    # and after OFFICIAL_RETRIES_PER_RELAXATION failures its targets too (never giving up disjointness).
    ctx = torch.zeros(B, H, W, dtype=torch.bool)
    failed = torch.zeros(B, dtype=torch.long)
    pending = torch.ones(B, dtype=torch.bool)
    tgt_union = tgt_masks.any(dim=1)  # (B, H, W)
    for _ in range(FIXED_MAX_ROUNDS):
        idx = pending.nonzero(as_tuple=True)[0]
        if idx.numel() == 0:
            break
        P = idx.numel()
        renew = idx[(failed[idx] > 0) & (failed[idx] % OFFICIAL_RETRIES_PER_RELAXATION == 0)]
        if renew.numel() > 0:
            nt = draw_targets((renew.numel(), M))
            nt_h, nt_w = nt[2], nt[3]
            # Renewed targets obey min_keep too: keep the old block where the new one is too small.
            keep_old = nt_h * nt_w <= cfg.min_keep
            for full, new in zip((t_top, t_left, t_h, t_w), nt, strict=True):
                full[renew] = torch.where(keep_old, full[renew], new)
            tgt_masks[renew] = block_masks(t_top[renew], t_left[renew], t_h[renew], t_w[renew], grid_size)
            tgt_union[renew] = tgt_masks[renew].any(dim=1)
        c_top, c_left, c_h, c_w = _fixed_draw_blocks(
            (P, C), cfg.context_scale, cfg.context_aspect, grid_size, generator
        )
        block = block_masks(c_top, c_left, c_h, c_w, grid_size)  # (P, C, H, W)
        block = block[:, 0] if C == 1 else block.any(dim=1)  # (P, H, W): the union of the context blocks
        if not cfg.allow_overlap:
            block &= ~tgt_union[idx]
        ok = block.flatten(1).sum(dim=1) > cfg.min_keep
        if P == B:  # the first round: every image, no scatter needed
            ctx = torch.where(ok[:, None, None], block, ctx)
        else:
            ctx[idx[ok]] = block[ok]
        pending[idx[ok]] = False
        failed[idx[~ok]] += 1
    else:
        _give_up("context", cfg, grid_size)

    ctx_flat = ctx.flatten(1)  # (B, N)
    counts = ctx_flat.sum(dim=1)
    if cfg.context_fill == "subsample":
        context = random_subset_indices(ctx_flat, int(counts.min()), generator)
        context_valid = None
    else:
        context, context_valid = first_indices(ctx_flat, int(counts.max()))
    targets, targets_valid = rectangle_indices(t_top, t_left, t_h, t_w, W, int((t_h * t_w).max()))  # (B, M, K)
    return MaskBatch(
        context=context, targets=targets, context_valid=context_valid, targets_valid=targets_valid
    )


def _raise_if_never_valid(
    cfg: MultiBlockMasker.Config,
    grid_size: tuple[int, int],
    target_sizes: set[tuple[int, int]],
    context_sizes: set[tuple[int, int]],
) -> None:
    """Refuse official-mode sizes on which the reference collator would loop forever.

    An unconstrained block has exactly ``h*w`` patches whatever its place, so ``h*w <= min_keep`` can never
    pass the reference's ``len(mask) > min_keep`` test: its ``while not valid_mask`` loop never ends (for the
    context, once every target has been relaxed).
    """
    H, W = grid_size
    for what, sizes, field in (
        ("target", target_sizes, "target_scale"),
        ("context", context_sizes, "context_scale"),
    ):
        small = [s for s in sizes if s[0] * s[1] <= cfg.min_keep]
        if small:
            h, w = min(small, key=lambda s: (s[0] * s[1], s))  # the smallest block sets the fix
            raise JepaflowError(
                f"masker (mode official): on a {H}x{W} patch grid some batches draw a {h}x{w} {what} block "
                f"({h * w} patches), but a block needs more than min_keep={cfg.min_keep} patches; the reference "
                "collator loops forever on such a batch",
                f"set masker.min_keep below {h * w}, or raise masker.{field} (or use larger images / smaller patches)",
            )


def _give_up(what: str, cfg: MultiBlockMasker.Config, grid_size: tuple[int, int]) -> None:
    H, W = grid_size
    raise JepaflowError(
        f"masker (mode fixed): no {what} with more than min_keep={cfg.min_keep} patches found on a {H}x{W} patch "
        f"grid after {FIXED_MAX_ROUNDS} rounds of redraws",
        f"lower masker.min_keep, or change masker.{what}_scale / masker.{what}_aspect",
    )


# ------------------------------------------------------------------------------------------------ plugin
def _check_range(v: tuple[float, float], *, upper_one: bool) -> tuple[float, float]:
    lo, hi = v
    if lo > hi:
        raise ValueError(f"range must be ordered (low <= high), got ({lo}, {hi})")
    if lo <= 0:
        raise ValueError(f"values must be > 0, got ({lo}, {hi})")
    if upper_one and hi > 1:
        raise ValueError(f"a scale is a fraction of the image, in (0, 1], got ({lo}, {hi})")
    return v


class MultiBlockMasker(Masker):
    """I-JEPA multi-block masks (targets ``(B, M, K_tgt)``, context ``(B, K_ctx)``), in two modes.

    ``mode="official"`` reproduces facebookresearch/ijepa ``src/masks/multiblock.py:MaskCollator`` (sizes shared
    by the batch, corners short of the last row/column, context cut to the batch minimum from the end);
    ``mode="fixed"`` draws sizes per image and block, places blocks anywhere, and pads instead of cutting.
    See the module docstring and docs/maskers.md.
    """

    class Config(PluginConfig):
        mode: Literal["official", "fixed"] = Field(
            "official",
            description="official: reference collator rules, quirks included; fixed: quirks removed",
        )
        num_targets: int = Field(4, ge=1, le=1024, description="target blocks per image (M)")
        target_scale: tuple[float, float] = Field(
            (0.15, 0.2), description="target block area, fraction of image"
        )
        target_aspect: tuple[float, float] = Field(
            (0.75, 1.5), description="target block aspect ratio h/w range"
        )
        num_context: int = Field(1, ge=1, le=1024, description="context blocks per image (their union is the context)")
        context_scale: tuple[float, float] = Field(
            (0.85, 1.0), description="context block area, fraction of image"
        )
        context_aspect: tuple[float, float] = Field(
            (1.0, 1.0), description="context block aspect ratio h/w range"
        )
        min_keep: int = Field(
            10, ge=0, le=MAX_IMAGE_SIZE**2, description="a block must keep more than this many patches (else redrawn)"
        )
        allow_overlap: bool = Field(False, description="let the context include target patches")
        context_fill: Literal["pad", "subsample"] = Field(
            "pad",
            description="fixed mode: pad every context to the batch max (context_valid), or subsample to the min",
        )

        @field_validator("target_scale", "context_scale")
        @classmethod
        def _scale_range(cls, v: tuple[float, float]) -> tuple[float, float]:
            return _check_range(v, upper_one=True)

        @field_validator("target_aspect", "context_aspect")
        @classmethod
        def _aspect_range(cls, v: tuple[float, float]) -> tuple[float, float]:
            return _check_range(v, upper_one=False)

        @model_validator(mode="after")
        def _fill_needs_fixed(self) -> MultiBlockMasker.Config:
            if self.mode == "official" and self.context_fill != "pad":
                raise ValueError(
                    "context_fill applies to mode 'fixed' only (mode 'official' cuts every context to the batch "
                    "minimum, as the reference does)"
                )
            return self

    def __init__(self, config: MultiBlockMasker.Config | None = None):
        self.config = config if config is not None else self.Config()
        self._checked: set[tuple[int, int]] = set()

    @property
    def allows_overlap(self) -> bool:  # Masker.allows_overlap: the contract checker's disjointness rule
        return self.config.allow_overlap

    def check(self, grid_size: tuple[int, int]) -> None:  # Masker.check: called by the engine before training
        self.check_grid(grid_size)

    def check_grid(self, grid_size: tuple[int, int]) -> None:
        """Raise :class:`~jepaflow.errors.JepaflowError` if this config cannot produce valid masks on the grid.

        Call it once before training (the masker also calls it on the first batch of each grid size) so that
        a recipe whose blocks are too small for ``min_keep`` fails at step 0 with a fix, not at a random step
        inside a DataLoader worker.
        """
        grid_size = (int(grid_size[0]), int(grid_size[1]))
        H, W = grid_size
        if H < 2 or W < 2:
            raise JepaflowError(
                f"masker: a {H}x{W} patch grid is too small for block masks", "use a larger grid"
            )
        cfg = self.config
        if cfg.mode == "official":
            _raise_if_never_valid(
                cfg,
                grid_size,
                official_reachable_sizes(cfg.target_scale, cfg.target_aspect, grid_size),
                official_reachable_sizes(cfg.context_scale, cfg.context_aspect, grid_size),
            )
        else:
            # The largest target the ranges allow must be able to pass min_keep, or redraws never end.
            grid = torch.linspace(0, 1, 65)
            s = cfg.target_scale[0] + (cfg.target_scale[1] - cfg.target_scale[0]) * grid[:, None]
            a = cfg.target_aspect[0] + (cfg.target_aspect[1] - cfg.target_aspect[0]) * grid[None, :]
            h, w = fixed_block_sizes(s, a, grid_size)
            if int((h * w).max()) <= cfg.min_keep:
                _give_up("target", cfg, grid_size)
        self._checked.add(grid_size)

    def __call__(self, batch_size: int, grid_size: tuple[int, int], generator: torch.Generator) -> MaskBatch:
        """Masks for one batch.

        Returns:
            :class:`MaskBatch` with ``context (B, K_ctx)`` and ``targets (B, M, K_tgt)`` int64 row-major indices,
            ascending within each row. Official mode: no padding (``*_valid`` None). Fixed mode: targets padded
            to the batch maximum (``targets_valid``), context padded (``context_valid``) or subsampled.
        """
        grid_size = (int(grid_size[0]), int(grid_size[1]))
        if grid_size not in self._checked:
            self.check_grid(grid_size)
        if self.config.mode == "official":
            return sample_official(self.config, batch_size, grid_size, generator)
        return sample_fixed(self.config, batch_size, grid_size, generator)
