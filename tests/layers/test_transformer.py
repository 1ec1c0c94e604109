"""Block(rows_from=...) equals the full block's last rows, whatever the attention path and mask."""

from __future__ import annotations

import pytest
import torch

from jepaflow.encoders.vit import make_blocks


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("mask_kind", [None, "keys", "full"])
def test_rows_from_equals_the_full_block(fused, mask_kind):
    torch.manual_seed(0)
    block = make_blocks(48, 1, 4, 4.0, 0.0)[0].double()
    block.attn.fused_attn = fused
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.1 * torch.randn_like(p))  # non-trivial biases and norms
    x = torch.randn(3, 20, 48, dtype=torch.float64)
    mask = None
    if mask_kind == "keys":
        mask = (torch.rand(3, 20) > 0.3)[:, None, None, :]
    elif mask_kind == "full":
        mask = torch.rand(3, 1, 20, 20) > 0.3
        mask[..., 0] = True  # every row sees one key
    full = block(x, attn_mask=mask)[:, 7:]
    rows = block(x, attn_mask=mask, rows_from=7)
    torch.testing.assert_close(rows, full, atol=1e-12, rtol=0)


def test_rows_from_draws_the_same_drop_path():
    block = make_blocks(32, 2, 4, 4.0, 0.5)[1].train()  # drop path 0.5 on the second block
    x = torch.randn(8, 10, 32)
    torch.manual_seed(1)
    full = block(x)[:, 4:]
    torch.manual_seed(1)
    rows = block(x, rows_from=4)
    torch.testing.assert_close(rows, full, atol=1e-6, rtol=1e-6)
