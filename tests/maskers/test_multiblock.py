"""MultiBlockMasker: the reference collator's rules (mode official) and the quirk-free mode (fixed).

The reference is facebookresearch/ijepa src/masks/multiblock.py:MaskCollator. `_reference_*` below restate
its rules with plain loops and Python's `random` (an independent re-statement, not a copy), so that the
vectorized sampler can be compared with them distribution-wise.
"""

from __future__ import annotations

import math
import random

import pytest
import torch
from pydantic import ValidationError

from jepaflow.errors import JepaflowError
from jepaflow.interfaces import MaskBatch, Masker
from jepaflow.maskers.multiblock import (
    MultiBlockMasker,
    block_masks,
    first_indices,
    official_block_size,
    random_subset_indices,
    rectangle_indices,
)
from jepaflow.maskers.stats import dense_masks, mask_statistics

G14 = (14, 14)
G8 = (8, 8)
# 4x3 target blocks only on an 8x8 grid: with min_keep=10 the reference's relaxation ("tries") really happens.
RELAX_8 = dict(target_scale=(0.172, 0.2), target_aspect=(1.2, 1.5), min_keep=10)


def masker(**kw) -> MultiBlockMasker:
    return MultiBlockMasker(MultiBlockMasker.Config(**kw))


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rect_of(idx: torch.Tensor, W: int) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a set of indices that must form a full rectangle."""
    r, c = idx // W, idx % W
    top, left = int(r.min()), int(c.min())
    h, w = int(r.max()) - top + 1, int(c.max()) - left + 1
    assert idx.numel() == h * w, "indices do not form a full rectangle"
    return top, left, h, w


# ---------------------------------------------------------------------------------------- reference (loops)
def _reference_block_size(u, scale, aspect, H, W):
    s = scale[0] + u * (scale[1] - scale[0])
    ar = aspect[0] + u * (aspect[1] - aspect[0])
    keep = int(H * W * s)
    h = int(round(math.sqrt(keep * ar)))
    w = int(round(math.sqrt(keep / ar)))
    while h >= H:
        h -= 1
    while w >= W:
        w -= 1
    return h, w


def _reference_batch(rng: random.Random, B, H, W, M, t_scale, t_aspect, c_scale, min_keep):
    """One batch by the reference rules, with Python loops: lists of index lists (context cut to the min)."""
    th, tw = _reference_block_size(rng.random(), t_scale, t_aspect, H, W)
    ch, cw = _reference_block_size(rng.random(), c_scale, (1.0, 1.0), H, W)
    contexts, targets = [], []
    for _ in range(B):
        blocks = []
        for _ in range(M):
            top, left = rng.randrange(H - th), rng.randrange(W - tw)
            blocks.append({(top + i) * W + left + j for i in range(th) for j in range(tw)})
        failures = 0
        while True:
            top, left = rng.randrange(H - ch), rng.randrange(W - cw)
            ctx = {(top + i) * W + left + j for i in range(ch) for j in range(cw)}
            for blk in blocks[: max(M - failures // 20, 0)]:
                ctx -= blk
            if len(ctx) > min_keep:
                break
            failures += 1
        contexts.append(sorted(ctx))
        targets.append([sorted(b) for b in blocks])
    k = min(len(c) for c in contexts)
    return [c[:k] for c in contexts], targets


def _reference_stats(seed, n_batches, B, H, W, cfg):
    """Per-batch context sizes, (N,) context frequency, images whose context meets a target, target sizes."""
    rng = random.Random(seed)
    sizes, freq, overlapping, tsizes = [], torch.zeros(H * W), 0, set()
    for _ in range(n_batches):
        ctxs, tgts = _reference_batch(
            rng,
            B,
            H,
            W,
            4,
            cfg["target_scale"],
            cfg.get("target_aspect", (0.75, 1.5)),
            cfg.get("context_scale", (0.85, 1.0)),
            cfg["min_keep"],
        )
        sizes.append(len(ctxs[0]))
        tsizes.add(len(tgts[0][0]))
        for c, ts in zip(ctxs, tgts, strict=True):
            freq[c] += 1
            overlapping += bool(set(c) & set().union(*map(set, ts)))
    return torch.tensor(sizes, dtype=torch.float64), freq / (n_batches * B), overlapping, tsizes


# ---------------------------------------------------------------------------------------- config
def test_is_a_masker_with_paper_defaults():
    m = MultiBlockMasker(MultiBlockMasker.Config())
    assert isinstance(m, Masker)
    c = m.config
    assert (c.mode, c.num_targets, c.target_scale, c.target_aspect) == (
        "official",
        4,
        (0.15, 0.2),
        (0.75, 1.5),
    )
    assert (c.num_context, c.context_scale, c.context_aspect, c.min_keep) == (1, (0.85, 1.0), (1.0, 1.0), 10)
    assert c.allow_overlap is False and c.context_fill == "pad"


@pytest.mark.parametrize(
    "field,value",
    [
        ("target_scale", (0.3, 0.2)),
        ("target_scale", (0.0, 0.2)),
        ("context_scale", (0.85, 1.2)),
        ("target_aspect", (0.0, 1.5)),
        ("context_aspect", (2.0, 1.0)),
        ("num_targets", 0),
        ("min_keep", -1),
        ("mode", "paper"),
    ],
)
def test_config_rejects_bad_ranges_with_field_path(field, value):
    with pytest.raises(ValidationError) as exc:
        MultiBlockMasker.Config(**{field: value})
    assert exc.value.errors()[0]["loc"][0] == field


def test_subsample_fill_is_for_fixed_mode_only():
    with pytest.raises(ValidationError, match="context_fill"):
        MultiBlockMasker.Config(mode="official", context_fill="subsample")
    MultiBlockMasker.Config(mode="fixed", context_fill="subsample")


# ---------------------------------------------------------------------------------------- pure helpers
def test_block_size_formula_by_hand():
    # 14x14, u=0: n=int(196*0.15)=29, ar=0.75 -> h=round(4.66)=5, w=round(6.22)=6
    assert official_block_size(0.0, (0.15, 0.2), (0.75, 1.5), G14) == (5, 6)
    # u->1: n=int(196*0.2)=39, ar=1.5 -> h=round(7.65)=8, w=round(5.10)=5
    assert official_block_size(0.999999, (0.15, 0.2), (0.75, 1.5), G14) == (8, 5)
    # the context block can never reach the grid side: 14 -> 13 (and 8 -> 7)
    assert official_block_size(0.999999, (0.85, 1.0), (1.0, 1.0), G14) == (13, 13)
    assert official_block_size(0.0, (0.85, 1.0), (1.0, 1.0), G8) == (7, 7)


def test_block_size_matches_loop_reference_for_same_draws():
    rng = random.Random(0)
    for grid in (G8, G14, (28, 28), (10, 16)):
        for _ in range(500):
            u = rng.random()
            for scale, aspect in (
                ((0.15, 0.2), (0.75, 1.5)),
                ((0.85, 1.0), (1.0, 1.0)),
                ((0.05, 0.9), (0.3, 3.0)),
            ):
                assert official_block_size(u, scale, aspect, grid) == _reference_block_size(
                    u, scale, aspect, *grid
                )


def test_block_masks_and_first_indices():
    m = block_masks(torch.tensor([1]), torch.tensor([2]), 2, 3, (4, 6))[0]
    assert m.sum() == 6 and m[1:3, 2:5].all()
    idx, valid = first_indices(
        torch.tensor([[False, True, True, False, True], [True, False, False, False, False]]), 2
    )
    assert idx.tolist() == [[1, 2], [0, 0]] and valid.tolist() == [[True, True], [True, False]]
    mask = torch.zeros(3, 10, dtype=torch.bool)
    mask[:, ::2] = True
    sub = random_subset_indices(mask, 3, gen(0))
    assert sub.shape == (3, 3) and (sub % 2 == 0).all() and (sub.diff(dim=1) > 0).all()


def test_rectangle_indices_equal_first_indices_of_the_block_masks():
    g = torch.Generator().manual_seed(0)
    H, W = 7, 9
    h = torch.randint(1, H + 1, (5, 3), generator=g)
    w = torch.randint(1, W + 1, (5, 3), generator=g)
    top = (torch.rand(5, 3, generator=g) * (H - h + 1)).long()
    left = (torch.rand(5, 3, generator=g) * (W - w + 1)).long()
    k = int((h * w).max())
    expected = first_indices(block_masks(top, left, h, w, (H, W)).flatten(-2), k)
    got = rectangle_indices(top, left, h, w, W, k)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


# ---------------------------------------------------------------------------------------- official mode
def test_official_sizes_shapes_and_corners_follow_the_rules():
    m = masker()
    H, W = G14
    for seed in range(20):
        u = torch.rand(2, generator=gen(seed))  # the masker's first two draws: targets, then context
        th, tw = official_block_size(float(u[0]), (0.15, 0.2), (0.75, 1.5), G14)
        b = m(16, G14, gen(seed))
        assert b.context_valid is None and b.targets_valid is None
        assert b.targets.dtype == torch.int64 and b.context.dtype == torch.int64
        assert b.targets.shape == (16, 4, th * tw)
        for blk in b.targets.reshape(-1, th * tw):
            top, left, h, w = rect_of(blk, W)
            assert (h, w) == (th, tw)  # every image of the batch shares the block size
            assert top + h <= H - 1 and left + w <= W - 1  # never the last row / column
        assert (b.targets.diff(dim=-1) > 0).all() and (b.context.diff(dim=-1) > 0).all()
        ctx_rows = b.context // W
        assert ctx_rows.max() < H - 1 and (b.context % W).max() < W - 1


def test_official_context_block_size_shared_and_placed_short_of_the_edge():
    # allow_overlap: the context is its plain block, so its shape is visible (a mid-size block moves around).
    m = masker(context_scale=(0.3, 0.4), allow_overlap=True)
    for seed in range(10):
        u = torch.rand(2, generator=gen(seed))
        ch, cw = official_block_size(float(u[1]), (0.3, 0.4), (1.0, 1.0), G14)
        b = m(32, G14, gen(seed))
        assert b.context.shape == (32, ch * cw)
        tops = set()
        for row in b.context:
            top, left, h, w = rect_of(row, 14)
            assert (h, w) == (ch, cw) and top < 14 - ch and left < 14 - cw
            tops.add(top)
        assert len(tops) > 1  # positions are drawn per image


def test_official_context_disjoint_from_targets_and_cut_from_the_end():
    m = masker()
    H, W = G14
    for seed in range(5):
        b = m(32, G14, gen(seed))
        ctx, tgt = dense_masks(b, G14)
        assert not (ctx & tgt.any(1)).any()
        # With 14x14 the context block is always 13x13 at (0, 0): rebuild each full context and check that
        # the output keeps its first K (top-left-most) indices, K the batch minimum.
        full = block_masks(torch.zeros(32, dtype=torch.long), torch.zeros(32, dtype=torch.long), 13, 13, G14)
        full = full.flatten(1) & ~tgt.any(1)
        k = int(full.sum(1).min())
        assert b.context.shape == (32, k) and k > 10
        expected, _ = first_indices(full, k)
        assert torch.equal(b.context, expected)


def test_official_is_deterministic_under_the_generator():
    m = masker()
    a, b, c = m(8, G14, gen(3)), m(8, G14, gen(3)), m(8, G14, gen(4))
    assert torch.equal(a.context, b.context) and torch.equal(a.targets, b.targets)
    assert not (a.context.shape == c.context.shape and torch.equal(a.context, c.context))
    torch.manual_seed(0)
    x = m(8, G14, gen(5))
    torch.manual_seed(1)  # the global RNG plays no part
    y = m(8, G14, gen(5))
    assert torch.equal(x.context, y.context) and torch.equal(x.targets, y.targets)


def test_official_refuses_sizes_on_which_the_reference_loops_forever():
    # 32 px / patch 4 with the paper's min_keep=10: about half the batches draw 3x3 targets (9 patches),
    # which the reference can never accept (it spins in its retry loop). We say so up front.
    with pytest.raises(JepaflowError, match="min_keep"):
        masker()(4, G8, gen(0))
    b = masker(min_keep=4)(64, G8, gen(0))
    assert b.targets.shape[-1] in (9, 12)
    assert (b.context.shape[1]) > 4


def test_official_relaxation_drops_the_last_targets_first():
    # 8x8, 4x3 targets, min_keep=10: the 7x7 context minus 4 targets is sometimes <= 10 patches; after 20
    # failures the last target stops constraining it, as in the reference. Target 0 always constrains
    # (49 - 12 > 10), so it is never overlapped; the last one sometimes is.
    m = masker(**RELAX_8)
    hits = torch.zeros(4, dtype=torch.long)
    for seed in range(30):
        b = m(64, G8, gen(seed))
        ctx, tgt = dense_masks(b, G8)
        assert b.context.shape[1] > 10
        hits += (ctx[:, None, :] & tgt).any(-1).sum(0)
    assert hits[0] == 0 and hits[3] > 0


# A 6x6 context block that moves on a 10x10 grid and often fails min_keep: how many failed draws come before a
# target is relaxed (20 in the reference) shows in how often the context meets a target.
MOVING_10 = dict(context_scale=(0.35, 0.4), target_scale=(0.15, 0.2), min_keep=10)


@pytest.mark.parametrize(
    "grid,cfg", [(G8, RELAX_8), ((10, 10), MOVING_10)], ids=["8x8-fixed-context", "10x10-moving"]
)
def test_official_matches_loop_reference_distribution(grid, cfg):
    # Same rules, independent random streams: compare context size, where the context falls, and how often
    # the relaxation lets the context meet a target.
    n, B = 300, 16
    ref_sizes, ref_freq, ref_overlapping, ref_tsizes = _reference_stats(0, n, B, *grid, cfg)
    m = masker(**cfg)
    g = gen(0)
    batches = [m(B, grid, g) for _ in range(n)]
    sizes = torch.tensor([float(b.context.shape[1]) for b in batches], dtype=torch.float64)
    se = math.sqrt(ref_sizes.var() / n + sizes.var() / n)
    assert abs(sizes.mean() - ref_sizes.mean()) < 4 * se
    stats = mask_statistics(batches, grid)
    freq = stats["context_freq"].flatten()
    assert torch.equal(freq == 0, ref_freq == 0)  # identical never-covered patches
    assert (freq - ref_freq).abs().max() < 0.08
    tsizes = {b.targets.shape[-1] for b in batches}
    assert tsizes <= {
        h * w
        for h, w in {
            _reference_block_size(i / 1000, cfg["target_scale"], cfg.get("target_aspect", (0.75, 1.5)), *grid)
            for i in range(1000)
        }
    }
    assert len(tsizes) == len(ref_tsizes)
    overlapping = 0
    for b in batches:
        ctx, tgt = dense_masks(b, grid)
        overlapping += int((ctx & tgt.any(1)).any(1).sum())
    p_ref, p = ref_overlapping / (n * B), overlapping / (n * B)
    assert p_ref > 0 and p > 0
    assert abs(p - p_ref) < 4 * math.sqrt(2 * p_ref * (1 - p_ref) / (n * B)) + 1e-3


def test_official_block_size_sets_match_loop_reference_on_14x14():
    # For the paper's settings on 224/16, every batch's block size is one the reference rule gives.
    m = masker()
    allowed = {
        h * w
        for h, w in {_reference_block_size(i / 1000, (0.15, 0.2), (0.75, 1.5), 14, 14) for i in range(1000)}
    }
    seen = {m(2, G14, gen(s)).targets.shape[-1] for s in range(200)}
    assert seen <= allowed and len(seen) >= 3


def test_several_context_blocks_are_merged():
    b = masker(num_context=2, context_scale=(0.2, 0.25), allow_overlap=True)(8, G14, gen(0))
    ctx, _ = dense_masks(b, G14)
    assert b.context.shape[1] >= 25  # at least one 5x5-ish block, usually two
    assert (b.context.diff(dim=-1) > 0).all()


# ---------------------------------------------------------------------------------------- fixed mode
def _check_fixed(b: MaskBatch, B: int, M: int, grid, min_keep: int):
    H, W = grid
    assert b.targets.shape[:2] == (B, M) and b.targets_valid is not None
    tv = b.targets_valid
    assert (b.targets[~tv] == 0).all()  # padding holds index 0
    assert (tv.int().diff(dim=-1) <= 0).all()  # padding only at the end
    sizes = set()
    for blk, v in zip(b.targets.reshape(-1, b.targets.shape[-1]), tv.reshape(-1, tv.shape[-1]), strict=True):
        idx = blk[v]
        assert (idx.diff() > 0).all()
        _, _, h, w = rect_of(idx, W)
        assert h * w > min_keep
        sizes.add((h, w))
    assert tv.sum(-1).max() == b.targets.shape[-1]  # padded to the batch maximum, no more
    return sizes


def test_fixed_pad_masks_are_valid_padded_and_disjoint():
    B = 32
    b = masker(mode="fixed")(B, G14, gen(0))
    sizes = _check_fixed(b, B, 4, G14, 10)
    assert len(sizes) > 3  # sizes are drawn per image and per block
    cv = b.context_valid
    assert cv is not None and (b.context[~cv] == 0).all() and cv.sum(1).max() == b.context.shape[1]
    assert (cv.sum(1) > 10).all() and cv.sum(1).unique().numel() > 1
    ctx, tgt = dense_masks(b, G14)
    assert not (ctx & tgt.any(1)).any()
    for row, v in zip(b.context, cv, strict=True):
        assert (row[v].diff() > 0).all()


def test_fixed_subsample_gives_equal_counts():
    B = 16
    b = masker(mode="fixed", context_fill="subsample")(B, G14, gen(1))
    _check_fixed(b, B, 4, G14, 10)
    assert b.context_valid is None
    ctx, tgt = dense_masks(b, G14)
    assert (ctx.sum(1) == b.context.shape[1]).all()  # no duplicates: every index distinct
    assert not (ctx & tgt.any(1)).any()
    assert (b.context.diff(dim=-1) > 0).all()
    # The same draws with padding: the subsample is a subset of the full context, cut to the batch minimum.
    full = masker(mode="fixed")(B, G14, gen(1))
    full_ctx, _ = dense_masks(full, G14)
    assert b.context.shape[1] == int(full_ctx.sum(1).min())
    assert not (ctx & ~full_ctx).any()


def test_fixed_covers_the_last_row_and_column_and_every_patch():
    m = masker(mode="fixed", min_keep=4)
    g = gen(2)
    stats = mask_statistics([m(64, G8, g) for _ in range(10)], G8)
    assert stats["context_freq"][-1].sum() > 0 and stats["context_freq"][:, -1].sum() > 0
    assert stats["target_freq"][-1].sum() > 0 and stats["target_freq"][:, -1].sum() > 0
    assert stats["never_context_or_target"] == 0 and stats["overlap"] == 0.0


def test_fixed_is_deterministic_and_respects_allow_overlap():
    m = masker(mode="fixed")
    a, b = m(8, G14, gen(7)), m(8, G14, gen(7))
    assert torch.equal(a.context, b.context) and torch.equal(a.targets, b.targets)
    o = masker(mode="fixed", allow_overlap=True)(64, G14, gen(0))
    assert mask_statistics(o, G14)["overlap"] > 0.5  # the context block covers most of the image


def test_fixed_refuses_blocks_too_small_for_min_keep():
    with pytest.raises(JepaflowError, match="min_keep"):
        masker(mode="fixed", target_scale=(0.01, 0.02), min_keep=10)(2, G8, gen(0))
