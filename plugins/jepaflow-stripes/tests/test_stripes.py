"""Tests of the stripe masker: shapes, disjointness, stripe geometry, uniform placement, determinism."""

from __future__ import annotations

import importlib.metadata as md

import pytest
import torch
from jepaflow.errors import JepaflowError
from jepaflow.interfaces import MaskBatch, Masker
from pydantic import ValidationError

from jepaflow_stripes import StripeMasker, StripeMaskerConfig


def sample(grid=(6, 6), batch=16, seed=0, **cfg) -> MaskBatch:
    masker = StripeMasker(StripeMaskerConfig(**cfg))
    return masker(batch, grid, torch.Generator().manual_seed(seed))


def valid_sets(masks: MaskBatch, b: int) -> tuple[set[int], list[set[int]]]:
    """Context and per-block target index sets of image ``b``, padding removed."""
    ctx = masks.context[b]
    if masks.context_valid is not None:
        ctx = ctx[masks.context_valid[b]]
    blocks = []
    for m in range(masks.targets.shape[1]):
        t = masks.targets[b, m]
        if masks.targets_valid is not None:
            t = t[masks.targets_valid[b, m]]
        blocks.append(set(t.tolist()))
    return set(ctx.tolist()), blocks


def test_is_a_masker_with_its_config():
    assert issubclass(StripeMasker, Masker)
    assert StripeMasker.Config is StripeMaskerConfig


@pytest.mark.parametrize(
    ("orientation", "grid", "k_tgt"),
    [("horizontal", (4, 6), 2 * 6), ("vertical", (4, 6), 2 * 4), ("random", (5, 5), 2 * 5)],
)
def test_shapes_without_padding(orientation, grid, k_tgt):
    masks = sample(grid=grid, batch=7, num_targets=1, stripe_width=2, orientation=orientation)
    n = grid[0] * grid[1]
    assert masks.targets.shape == (7, 1, k_tgt)
    assert masks.context.shape == (7, n - k_tgt)
    assert masks.context.dtype == masks.targets.dtype == torch.int64
    assert masks.context_valid is None and masks.targets_valid is None


@pytest.mark.parametrize("orientation", ["horizontal", "vertical", "random"])
@pytest.mark.parametrize("grid", [(6, 6), (4, 7), (7, 4)])
def test_context_is_exactly_the_complement_of_disjoint_stripes(orientation, grid):
    masks = sample(grid=grid, batch=32, num_targets=2, stripe_width=1, orientation=orientation)
    n = grid[0] * grid[1]
    for b in range(32):
        ctx, blocks = valid_sets(masks, b)
        assert not blocks[0] & blocks[1], "stripes of one image overlap"
        union = blocks[0] | blocks[1]
        assert not ctx & union, "a target patch is in the context"
        assert ctx | union == set(range(n)), "without context_ratio the context is every other patch"
        if masks.context_valid is None:
            assert masks.context[b].tolist() == sorted(ctx)


@pytest.mark.parametrize("orientation", ["horizontal", "vertical"])
def test_stripe_geometry(orientation):
    H, W, w = 5, 7, 2
    masks = sample(grid=(H, W), batch=64, num_targets=2, stripe_width=w, orientation=orientation)
    for b in range(64):
        _, blocks = valid_sets(masks, b)
        for block in blocks:
            rows = sorted({i // W for i in block})
            cols = sorted({i % W for i in block})
            if orientation == "horizontal":
                # w consecutive rows, each complete.
                assert cols == list(range(W)) and len(rows) == w and rows == list(range(rows[0], rows[0] + w))
            else:
                assert rows == list(range(H)) and len(cols) == w and cols == list(range(cols[0], cols[0] + w))
            assert len(block) == w * (W if orientation == "horizontal" else H)
    # Indices are row-major ascending inside a block.
    assert torch.equal(masks.targets, masks.targets.sort(dim=-1).values)


def test_random_orientation_on_a_non_square_grid_pads_and_marks_padding():
    H, W = 4, 6
    masks = sample(grid=(H, W), batch=64, num_targets=1, stripe_width=1, orientation="random")
    assert masks.targets.shape == (64, 1, max(H, W))
    assert masks.targets_valid is not None and masks.context_valid is not None
    n_tgt = masks.targets_valid.sum(dim=(1, 2))
    # Horizontal images: W target patches; vertical ones: H. Both must occur in 64 draws.
    assert set(n_tgt.tolist()) == {W, H}
    assert torch.equal(masks.context_valid.sum(1), H * W - n_tgt)
    # Padding holds index 0, as the MaskBatch contract requires.
    assert (masks.targets[~masks.targets_valid] == 0).all()
    assert (masks.context[~masks.context_valid] == 0).all()


def test_placement_is_uniform_over_non_overlapping_positions():
    # 1 stripe of width 2 in 8 rows: starts 0..6, each with probability 1/7, the last rows included.
    H, w, n = 8, 2, 4200
    masks = sample(grid=(H, 3), batch=n, seed=1, num_targets=1, stripe_width=w)
    starts = masks.targets[:, 0, 0] // 3
    freq = torch.bincount(starts, minlength=H).float() / n
    assert freq[H - w + 1 :].sum() == 0, "a stripe left the grid"
    expected = 1.0 / (H - w + 1)
    assert torch.allclose(freq[: H - w + 1], torch.full((H - w + 1,), expected), atol=0.02)


def test_two_stripes_placement_counts_every_pair_once():
    # 2 stripes of width 2 in 5 rows: non-overlapping placements are (0,2), (0,3), (1,3): each 1/3.
    masks = sample(grid=(5, 2), batch=3000, seed=2, num_targets=2, stripe_width=2)
    starts = masks.targets[:, :, 0] // 2  # (B, 2)
    pairs = {tuple(p) for p in starts.tolist()}
    assert pairs == {(0, 2), (0, 3), (1, 3)}
    for pair in pairs:
        share = (starts == torch.tensor(pair)).all(1).float().mean()
        assert abs(share - 1 / 3) < 0.04


def test_context_ratio_gives_equal_counts_random_subsets():
    H = W = 8
    masks = sample(grid=(H, W), batch=32, num_targets=1, stripe_width=2, context_ratio=0.25)
    assert masks.context.shape == (32, round(0.25 * H * W)) and masks.context_valid is None
    for b in range(32):
        ctx, blocks = valid_sets(masks, b)
        assert len(ctx) == 16 and not ctx & blocks[0]
    assert torch.equal(masks.context, masks.context.sort(dim=1).values)
    # Random subsets: the images do not all get the same context.
    assert len({tuple(c) for c in masks.context.tolist()}) > 1


def test_context_ratio_is_capped_at_the_non_target_patches():
    masks = sample(grid=(4, 4), batch=4, num_targets=1, stripe_width=2, context_ratio=1.0)
    assert masks.context.shape == (4, 16 - 8)


def test_determinism_and_only_the_given_generator_is_used():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = sample(seed=7, orientation="random", context_ratio=0.5)
    b = sample(seed=7, orientation="random", context_ratio=0.5)
    c = sample(seed=8, orientation="random", context_ratio=0.5)
    assert torch.equal(a.context, b.context) and torch.equal(a.targets, b.targets)
    assert not (torch.equal(a.context, c.context) and torch.equal(a.targets, c.targets))
    assert torch.equal(state, torch.get_rng_state()), "the global RNG was touched"


@pytest.mark.parametrize(
    ("num_targets", "stripe_width", "grid"), [(2, 2, (4, 8)), (5, 1, (4, 8)), (1, 4, (4, 4))]
)
def test_stripes_that_leave_no_context_are_a_user_error(num_targets, stripe_width, grid):
    masker = StripeMasker(StripeMaskerConfig(num_targets=num_targets, stripe_width=stripe_width))
    # Masker.check, which the engine calls before the DataLoader starts, and the call itself both refuse.
    with pytest.raises(JepaflowError, match="leaving no context") as info:
        masker.check(grid)
    assert "masker.num_targets" in info.value.fix
    with pytest.raises(JepaflowError, match="leaving no context"):
        masker(2, grid, torch.Generator().manual_seed(0))
    masker.check((grid[0] + num_targets * stripe_width, grid[1]))  # enough rows: fine


def test_config_validation():
    with pytest.raises(ValidationError):
        StripeMaskerConfig(stripe_width=0)
    with pytest.raises(ValidationError):
        StripeMaskerConfig(orientation="diagonal")
    with pytest.raises(ValidationError):
        StripeMaskerConfig(context_ratio=1.5)
    with pytest.raises(ValidationError):
        StripeMaskerConfig(stripes=3)  # unknown field: PluginConfig forbids extras


def test_entry_point_when_installed():
    eps = [ep for ep in md.entry_points(group="jepaflow.maskers") if ep.name == "stripes"]
    if not eps:
        pytest.skip("jepaflow-stripes is not installed (running from a source checkout)")
    assert eps[0].load() is StripeMasker
    assert eps[0].dist.metadata["Name"] == "jepaflow-stripes"


@pytest.mark.parametrize("orientation", ["horizontal", "vertical", "random"])
@pytest.mark.parametrize("grid", [(6, 6), (4, 7), (14, 14)])
def test_keeps_jepaflows_masker_contract(orientation, grid):
    # jepaflow's own checker: index range, dtypes, shapes, valid masks, no empty context, no overlap. It is what
    # `jepaflow validate`, `masks` and `run` call, so a failure here is a failure there.
    from jepaflow.testing import check_masker

    masker = StripeMasker(StripeMaskerConfig(num_targets=2, stripe_width=1, orientation=orientation))
    check_masker(masker, grid, batch_size=16)
