"""Collapse monitors: RankMe against constructed spectra and a hand computation, the feature spreads against
hand values, and the masked pools against boolean indexing."""

from __future__ import annotations

import math

import pytest
import torch

from jepaflow.layers.monitors import (
    RANKME_EPS,
    context_feature_std,
    feature_std,
    masked_mean_pool,
    rankme,
    token_std,
)


def _with_singular_values(s: torch.Tensor, n: int, d: int, seed: int = 0) -> torch.Tensor:
    """An ``(n, d)`` matrix whose nonzero singular values are ``s`` (random orthonormal bases)."""
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(n, len(s), generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(d, len(s), generator=g, dtype=torch.float64))
    return (u * s.double()) @ v.T


@pytest.mark.parametrize("k", [1, 3, 17, 64])
def test_rankme_of_k_equal_singular_values_is_k(k):
    z = _with_singular_values(torch.full((k,), 2.5), n=256, d=64).float()
    assert rankme(z).item() == pytest.approx(k, rel=1e-3)


def test_rankme_of_a_random_rank_k_matrix_is_at_most_k():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(512, 8, generator=g) @ torch.randn(8, 96, generator=g)  # rank 8, unequal singular values
    r = rankme(z).item()
    assert 6.0 < r <= 8.0 + 1e-3
    full = rankme(torch.randn(512, 96, generator=g)).item()
    assert 80.0 < full <= 96.0  # isotropic Gaussian: close to full rank


def test_rankme_of_collapsed_features_is_one():
    g = torch.Generator().manual_seed(2)
    direction = torch.randn(1, 48, generator=g)
    collapsed = torch.randn(300, 1, generator=g) * direction  # every row a multiple of one vector
    assert rankme(collapsed).item() == pytest.approx(1.0, abs=1e-3)
    assert rankme(direction.expand(300, 48)).item() == pytest.approx(1.0, abs=1e-3)  # one point


def test_rankme_matches_a_hand_computation():
    z = torch.tensor([[3.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # singular values 3, 1
    p = [0.75 + RANKME_EPS, 0.25 + RANKME_EPS]
    expected = math.exp(-sum(q * math.log(q) for q in p))  # = 1.7547654...
    assert expected == pytest.approx(1.7547654, abs=1e-6)
    assert rankme(z).item() == pytest.approx(expected, rel=1e-6)
    # invariant to scale and to rotating the rows (only singular values matter)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(3)))
    assert rankme(7.0 * z @ q).item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        rankme(torch.ones(2, 3, 4))


def test_feature_std_by_hand():
    z = torch.tensor([[0.0, 0.0], [2.0, 4.0]])
    # unbiased std over the batch: sqrt(2), sqrt(8); mean of the two
    assert feature_std(z).item() == pytest.approx((math.sqrt(2) + math.sqrt(8)) / 2, rel=1e-6)
    # normalized: rows e1, e2 -> std per dimension sqrt(1/2), times sqrt(D = 2) -> 1
    assert feature_std(torch.eye(2), normalize=True).item() == pytest.approx(1.0, rel=1e-6)
    # the normalized form ignores the scale of each row; the raw one does not
    g = torch.Generator().manual_seed(4)
    x = torch.randn(64, 16, generator=g)
    scales = torch.rand(64, 1, generator=g) * 10 + 0.1
    assert feature_std(x * scales, normalize=True).item() == pytest.approx(feature_std(x, normalize=True).item(),
                                                                           rel=1e-5)
    # views: per-view std over the batch, averaged over views
    v = torch.stack([z, 3 * z])
    assert feature_std(v).item() == pytest.approx(2 * feature_std(z).item(), rel=1e-6)
    # collapse and the degenerate batch
    assert feature_std(torch.ones(10, 5)).item() == 0.0
    assert feature_std(torch.randn(1, 5)).item() == 0.0


def test_context_pool_and_token_std_honour_validity():
    g = torch.Generator().manual_seed(5)
    tokens = torch.randn(4, 6, 8, generator=g)
    valid = torch.rand(4, 6, generator=g) > 0.4
    valid[:, 0] = True
    pooled = masked_mean_pool(tokens, valid)
    for b in range(4):
        torch.testing.assert_close(pooled[b], tokens[b][valid[b]].mean(0))
    torch.testing.assert_close(context_feature_std(tokens, valid), pooled.std(0).mean())
    torch.testing.assert_close(context_feature_std(tokens), tokens.mean(1).std(0).mean())
    # token_std: the std over every selected token of the batch, as boolean indexing would give
    torch.testing.assert_close(token_std(tokens, valid), tokens[valid].std(0).mean())
