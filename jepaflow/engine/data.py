"""Deterministic, resumable data loading.

Every random choice of the input pipeline is a function of (recipe seed, global step, slot, position), where the
*slot* ``rank * accum_steps + micro`` numbers the micro-batches of a step across all ranks: the epoch's sample
order comes from a generator seeded by (seed, epoch), each image's crop from one seeded by (seed, step, slot,
position), and the masks of a micro-batch from one seeded by (seed, step, slot), drawn inside the collate function
(so in the worker processes). Hence the batches of step ``s`` are the same whatever the number of workers; a run
resumed at step ``s`` sees exactly what an uninterrupted run would have seen; and 2 processes x 1 micro-batch see
the same data and masks as 1 process x 2 accumulated micro-batches.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Sampler

from jepaflow.interfaces import Batch, Dataset, Masker

_MASK64 = (1 << 63) - 1


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (splitmix64-style mixing; distinct tuples give unrelated seeds)."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & _MASK64


class SeededItems(torch.utils.data.Dataset):
    """Wraps a data set: item keys are ``(step, slot, position, index)``; the transform's randomness is seeded by
    (seed, step, slot, position) without disturbing the process's global RNG."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int, int, int]):
        step, slot, pos, index = key
        skipped = getattr(self.dataset, "skipped", 0)
        with torch.random.fork_rng(devices=[]):
            # Only the CPU generator: the transforms draw from it alone, and torch.manual_seed would also
            # (lazily) seed every accelerator backend, ~100x the cost per item in a CUDA build.
            torch.default_generator.manual_seed(mix_seed(self.seed, 1, step, slot, pos))
            image, label = self.dataset[index]
        # Unreadable files skipped for this item: counted per worker process, so carried back with the item.
        skipped = getattr(self.dataset, "skipped", 0) - skipped
        return image, label, step, slot, skipped


class StepBatchSampler(Sampler):
    """This rank's micro-batches for the steps ``[start, steps_per_epoch)`` of one epoch (drop-last).

    The epoch's permutation is shared by all ranks; step ``s`` takes the global slice ``[s*G, (s+1)*G)`` and rank
    ``r``'s micro-batch ``j`` is its sub-slice ``(r*accum + j)``, of size ``G / (world * accum)``.
    """

    def __init__(self, num_items: int, *, seed: int, epoch: int, steps_per_epoch: int, global_batch: int,
                 world_size: int, rank: int, accum_steps: int, start: int = 0):
        self.n, self.seed, self.epoch, self.spe = num_items, seed, epoch, steps_per_epoch
        self.G, self.world, self.rank, self.accum, self.start = global_batch, world_size, rank, accum_steps, start
        self.micro = global_batch // (world_size * accum_steps)

    def __len__(self) -> int:
        return (self.spe - self.start) * self.accum

    def __iter__(self) -> Iterator[list[tuple[int, int, int, int]]]:
        g = torch.Generator().manual_seed(mix_seed(self.seed, 0, self.epoch))
        perm = torch.randperm(self.n, generator=g).tolist()
        for s in range(self.start, self.spe):
            step = self.epoch * self.spe + s
            for j in range(self.accum):
                slot = self.rank * self.accum + j
                off = s * self.G + slot * self.micro
                yield [(step, slot, p, perm[off + p]) for p in range(self.micro)]


class MaskingCollator:
    """Stacks images and labels and, when the recipe has a masker, samples the micro-batch's masks."""

    def __init__(self, masker: Masker | None, grid_size: tuple[int, int], seed: int):
        self.masker, self.grid_size, self.seed = masker, tuple(grid_size), seed

    def __call__(self, items) -> Batch:
        views = None
        if isinstance(items[0][0], (list, tuple)):  # a view sampler: one list of views per image
            views = [torch.stack([it[0][v] for it in items]) for v in range(len(items[0][0]))]
            images = views[0]
        else:
            images = torch.stack([it[0] for it in items])
        labels = torch.tensor([int(it[1]) for it in items], dtype=torch.long)
        step, slot = items[0][2], items[0][3]
        masks = None
        if self.masker is not None:
            g = torch.Generator().manual_seed(mix_seed(self.seed, 2, step, slot))
            from jepaflow.engine.faults import plugin_errors

            with plugin_errors("masker", self.masker, f"sampling the masks of step {step}"):
                masks = self.masker(len(items), self.grid_size, g)
        skipped = sum(it[4] for it in items)
        return Batch(images=images, labels=labels, masks=masks, views=views,
                     extras={"skipped_images": skipped} if skipped else {})


def _ignore_stop_signals(worker_id: int) -> None:
    # A scheduler's SIGTERM (or Ctrl-C's SIGINT) reaches the whole process group. Workers must survive it so
    # that the main process can finish its step and write a checkpoint; torch's own worker handler would die.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def epoch_loader(dataset: Dataset, collator: MaskingCollator, sampler: StepBatchSampler, *, seed: int, epoch: int,
                 num_workers: int, pin_memory: bool) -> DataLoader:
    return DataLoader(
        SeededItems(dataset, seed),
        batch_sampler=sampler,
        collate_fn=collator,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=False,
        worker_init_fn=_ignore_stop_signals if num_workers > 0 else None,
        # Without its own generator, iter(DataLoader) draws a base seed from the global RNG, which would shift
        # stochastic layers (drop path) between a resumed and an uninterrupted run.
        generator=torch.Generator().manual_seed(mix_seed(seed, 3, epoch)),
    )
