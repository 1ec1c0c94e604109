"""MAE random masker: counts, exact partition of the grid, determinism, independence between images."""

import pytest
import torch

from jepaflow.errors import JepaflowError
from jepaflow.maskers.random import RandomMasker, num_visible


def draw(ratio: float, batch: int, grid: tuple[int, int], seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return RandomMasker(RandomMasker.Config(mask_ratio=ratio))(batch, grid, g)


def test_num_visible_follows_reference_floor():
    # reference: len_keep = int(L * (1 - mask_ratio))
    assert num_visible(196, 0.75) == 49  # ImageNet 224/16
    assert num_visible(49, 0.75) == 12  # Fashion-MNIST 28/4: 12.25 -> 12
    assert num_visible(49, 0.6) == 19  # 19.6 -> 19 (floor, not round)
    assert num_visible(10, 0.9) == 1  # 10 * (1 - 0.9) = 0.99999... in floats: still 1


def test_counts_shapes_and_sorted():
    m = draw(0.75, 8, (7, 7))
    assert m.context.shape == (8, 12) and m.targets.shape == (8, 1, 37)
    assert m.context.dtype == torch.int64 and m.targets.dtype == torch.int64
    assert m.context_valid is None and m.targets_valid is None  # equal counts: no padding
    assert torch.all(m.context[:, 1:] > m.context[:, :-1])
    assert torch.all(m.targets[..., 1:] > m.targets[..., :-1])


def test_context_and_targets_partition_the_grid():
    m = draw(0.75, 16, (4, 6))
    both = torch.cat([m.context, m.targets[:, 0]], dim=1).sort(dim=1).values
    assert torch.equal(both, torch.arange(24).expand(16, 24))  # disjoint and complete, every image


def test_deterministic_given_the_generator():
    a, b, c = draw(0.75, 4, (7, 7), seed=3), draw(0.75, 4, (7, 7), seed=3), draw(0.75, 4, (7, 7), seed=4)
    assert torch.equal(a.context, b.context) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.context, c.context)


def test_images_are_masked_independently():
    B, N = 4000, 49
    m = draw(0.75, B, (7, 7))
    kept = torch.zeros(B, N).scatter_(1, m.context, 1.0)
    # each patch kept with probability 12/49 (uniform over positions)
    assert torch.allclose(kept.mean(0), torch.full((N,), 12 / 49), atol=0.03)
    # no two images share a mask here (C(49,12) ~ 9e10 subsets), and images are uncorrelated:
    # P(patch j kept in image b and in image b+1) = (12/49)^2
    assert torch.unique(m.context, dim=0).shape[0] == B
    joint = (kept[:-1] * kept[1:]).mean()
    assert abs(joint.item() - (12 / 49) ** 2) < 0.01
    # an image's mask does not depend on the images drawn after it (row-wise noise)
    assert torch.equal(draw(0.75, 3, (7, 7)).context, m.context[:3])


def test_check_refuses_ratios_leaving_nothing():
    with pytest.raises(JepaflowError, match="no patch stays visible"):
        RandomMasker(RandomMasker.Config(mask_ratio=0.9)).check((3, 3))  # floor(0.9) = 0
    with pytest.raises(JepaflowError, match="no patch is masked"):
        RandomMasker(RandomMasker.Config(mask_ratio=1e-12)).check((3, 3))  # 9 of 9 within float tolerance
    RandomMasker(RandomMasker.Config(mask_ratio=0.5)).check((3, 3))


def test_config_bounds():
    with pytest.raises(ValueError):
        RandomMasker.Config(mask_ratio=1.0)
    with pytest.raises(ValueError):
        RandomMasker.Config(mask_ratio=0.0)
