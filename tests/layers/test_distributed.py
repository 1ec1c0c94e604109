"""Cross-process gathers: identity on one process; values and gradients on 2 real gloo processes."""

from __future__ import annotations

import torch
from gloo import gloo_group, spawn_ranks

from jepaflow.layers import distributed as D

B, F = 3, 4


def test_single_process_is_identity():
    assert (D.world_size(), D.rank(), D.is_distributed()) == (1, 0, False)
    x = torch.randn(B, F, requires_grad=True)
    y = D.all_gather_with_grad(x)
    assert y is x
    (y * 2).sum().backward()
    torch.testing.assert_close(x.grad, torch.full((B, F), 2.0))
    z = D.all_gather_no_grad(x)
    assert torch.equal(z, x) and not z.requires_grad


def rank_input(r: int) -> torch.Tensor:
    """Rank r's rows: distinct values per rank, row and column."""
    return 100.0 * (r + 1) + torch.arange(B * F, dtype=torch.float32).view(B, F)


def rank_weights(r: int, world: int) -> torch.Tensor:
    """Rank r's loss weights over the gathered batch ``(world*B, F)``: loss_r = sum(w_r * gathered)."""
    return (r + 1.0) * torch.arange(world * B * F, dtype=torch.float32).view(world * B, F) + 1.0


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    with gloo_group(rank, init_file):
        x = rank_input(rank).requires_grad_(True)
        gathered = D.all_gather_with_grad(x)
        loss = (rank_weights(rank, 2) * gathered).sum() + (gathered[rank * B:(rank + 1) * B] ** 2).sum()
        loss.backward()
        plain = D.all_gather_no_grad(x * 2)
        torch.save({"world": D.world_size(), "rank": D.rank(), "gathered": gathered.detach(), "grad": x.grad,
                    "plain": plain, "plain_grad": plain.requires_grad}, f"{out_dir}/rank{rank}.pt")


def test_two_gloo_processes_gather_values_and_gradients(tmp_path):
    spawn_ranks(_worker, tmp_path)
    everything = torch.cat([rank_input(0), rank_input(1)])
    for r in range(2):
        out = torch.load(tmp_path / f"rank{r}.pt")
        assert (out["world"], out["rank"]) == (2, r)
        torch.testing.assert_close(out["gathered"], everything, atol=0, rtol=0)
        torch.testing.assert_close(out["plain"], everything * 2, atol=0, rtol=0)
        assert not out["plain_grad"]
        # d(loss_0 + loss_1)/d x_r: both ranks' weights on rank r's rows (all-reduced), plus rank r's own
        # quadratic term 2 x_r (the other rank's quadratic term involves only its own rows).
        rows = slice(r * B, (r + 1) * B)
        expected = rank_weights(0, 2)[rows] + rank_weights(1, 2)[rows] + 2 * rank_input(r)
        torch.testing.assert_close(out["grad"], expected, atol=1e-5, rtol=0)
