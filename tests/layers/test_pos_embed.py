"""Sin-cos position tables against the formula, written out independently of the implementation."""

from __future__ import annotations

import math

import pytest
import torch

from jepaflow.layers.pos_embed import sincos_pos_embed_1d, sincos_pos_embed_2d


def formula_table(D: int, H: int, W: int) -> torch.Tensor:
    """I-JEPA/MAE table by hand: token n = r*W + c; channels [0, D/4) sin(c w_i), [D/4, D/2) cos(c w_i),
    [D/2, 3D/4) sin(r w_i), [3D/4, D) cos(r w_i); w_i = 10000^(-i / (D/4))."""
    q = D // 4
    out = torch.zeros(H * W, D, dtype=torch.float64)
    for r in range(H):
        for c in range(W):
            n = r * W + c
            for i in range(q):
                w = 10000.0 ** (-i / q)
                out[n, i] = math.sin(c * w)
                out[n, q + i] = math.cos(c * w)
                out[n, 2 * q + i] = math.sin(r * w)
                out[n, 3 * q + i] = math.cos(r * w)
    return out


@pytest.mark.parametrize("D,H,W", [(8, 3, 3), (8, 2, 4), (16, 4, 2), (12, 3, 5)])
def test_table_matches_formula(D, H, W):
    table = sincos_pos_embed_2d(D, (H, W))
    assert table.shape == (H * W, D)
    assert table.dtype == torch.float32
    torch.testing.assert_close(table.double(), formula_table(D, H, W), atol=1e-6, rtol=0)


def test_first_half_is_column_second_half_is_row():
    D, H, W = 8, 2, 4
    t = sincos_pos_embed_2d(D, (H, W)).reshape(H, W, D)
    # moving along a row (changing column) changes only the first half
    assert torch.equal(t[:, 0, D // 2 :], t[:, 3, D // 2 :])
    assert not torch.allclose(t[:, 0, : D // 2], t[:, 3, : D // 2])
    # moving down a column (changing row) changes only the second half
    assert torch.equal(t[0, :, : D // 2], t[1, :, : D // 2])
    assert not torch.allclose(t[0, :, D // 2 :], t[1, :, D // 2 :])
    # position 0 encodes as sin = 0, cos = 1 in both halves
    q = D // 4
    expected = torch.tensor([0.0] * q + [1.0] * q + [0.0] * q + [1.0] * q)
    torch.testing.assert_close(t[0, 0], expected)


def test_1d_frequencies():
    emb = sincos_pos_embed_1d(4, torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64))
    # D=4: w = [1, 1/100]
    expected = torch.tensor(
        [[math.sin(p), math.sin(p / 100), math.cos(p), math.cos(p / 100)] for p in (0.0, 1.0, 2.0)],
        dtype=torch.float64,
    )
    torch.testing.assert_close(emb, expected)


def test_float64_computation_then_cast():
    # the float32 table must be the float64 table rounded once: computing the angles in float32 (rounded
    # frequencies times positions up to 199) would give different float32 values for many entries
    table = sincos_pos_embed_2d(64, (1, 200), dtype=torch.float64)
    c = 199.0
    torch.testing.assert_close(table[199, 0], torch.tensor(math.sin(c), dtype=torch.float64))
    torch.testing.assert_close(
        table[199, 15], torch.tensor(math.sin(c * 10000.0 ** (-15 / 16)), dtype=torch.float64)
    )
    assert torch.equal(sincos_pos_embed_2d(64, (1, 200)), table.float())


@pytest.mark.parametrize("D", [6, 10, 7])
def test_width_must_be_multiple_of_4(D):
    with pytest.raises(ValueError):
        sincos_pos_embed_2d(D, (2, 2))
