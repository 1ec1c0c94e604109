"""Real two-process ``torch.distributed`` (gloo) runs on one machine, for tests of cross-rank code."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from jepaflow.interfaces import Batch


@contextmanager
def gloo_group(rank: int, init_file: str, world_size: int = 2):
    """Inside a spawned worker: join the process group (file rendezvous), leave it on exit."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        yield
    finally:
        dist.destroy_process_group()


def spawn_ranks(worker: Callable, tmp_path: Path, *args, nprocs: int = 2) -> None:
    """Run ``worker(rank, init_file, out_dir, *args)`` in ``nprocs`` processes; workers save their results under
    ``tmp_path`` (``torch.save``) for the test to compare."""
    mp.spawn(worker, args=(str(tmp_path / "init"), str(tmp_path), *args), nprocs=nprocs, join=True)


def _two_view_objective_worker(rank: int, init_file: str, out_dir: str, make_objective: Callable,
                               make_views: Callable) -> None:
    with gloo_group(rank, init_file):
        obj = make_objective()
        v1, v2 = make_views()
        half = v1.shape[0] // 2
        rows = slice(rank * half, (rank + 1) * half)
        out = obj(Batch(images=v1[rows], views=[v1[rows], v2[rows]]))
        out.loss.backward()
        grads = [p.grad.clone() for p in obj.parameters()]
        for gr in grads:  # DDP's gradient average
            dist.all_reduce(gr)
            gr /= 2
        torch.save({"loss": out.loss.detach(), "grads": grads}, f"{out_dir}/rank{rank}.pt")


def assert_two_ranks_equal_one_process(make_objective: Callable, make_views: Callable, tmp_path: Path) -> list[dict]:
    """A two-view objective on two ranks (half the batch each, DDP-averaged gradients) must give the loss and the
    gradients of one process on the whole batch. Returns each rank's saved loss and gradients."""
    spawn_ranks(_two_view_objective_worker, tmp_path, make_objective, make_views)
    obj = make_objective()
    v1, v2 = make_views()
    full = obj(Batch(images=v1, views=[v1, v2])).loss
    full.backward()
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert (ranks[0]["loss"] + ranks[1]["loss"]).item() / 2 == pytest.approx(full.item(), rel=1e-5)
    for p, g0, g1 in zip(obj.parameters(), ranks[0]["grads"], ranks[1]["grads"]):
        torch.testing.assert_close(g0, p.grad, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(g1, p.grad, rtol=1e-4, atol=1e-6)
    return ranks
