"""Label-free training monitors on a fixed batch, outside the hot path.

Every ``train.monitor_every`` steps (and at the last step of the run) the engine runs the objective's
representation encoder (:meth:`~jepaflow.interfaces.Objective.representation_encoder`, the one the probes
evaluate) in eval mode, under ``torch.no_grad``, on a fixed monitor batch: ``train.monitor_samples`` train images,
evenly spaced over the data set, with the deterministic evaluation transform, read once at the start. The pooled
features ``encoder.pool(encoder(images))`` ``(N, D)`` give (``jepaflow.layers.monitors``):

* ``rankme``: RankMe (Garrido et al., ICML 2023), the effective rank, at most ``min(N, D)``;
* ``repr_std``: the mean per-dimension std of the features over the batch (0: collapsed);
* ``repr_std_norm``: the same on L2-normalized features, times ``sqrt(D)`` (~1: spread; 0: collapsed).

With ``train.monitor_knn_every_epochs`` set, every that many epochs it also scores a weighted kNN classifier
(``jepaflow.probes.knn``, the probe's ``knn_k`` and ``knn_temperature``) with ``train.monitor_knn_samples`` train
images as the memory bank and as many test images as queries: ``knn_acc``, in [0, 1].

The values join the metrics line of that step (a monitor step is also a log step), so they land in
``metrics.jsonl`` and ``curves.png``. Only rank 0 computes them; they are the only work of a monitor step beyond
a log step's, and none of it happens on other steps. The process's RNG is left untouched, so monitoring changes
no training trajectory (resume stays exact).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from jepaflow.config import Recipe
from jepaflow.interfaces import Dataset, Encoder
from jepaflow.layers.monitors import feature_std, rankme


def evenly_spaced(num_items: int, count: int) -> list[int]:
    """``min(count, num_items)`` indices spread evenly over ``range(num_items)`` (folder data sets are sorted by
    class: the first items would share one label)."""
    count = min(count, num_items)
    return [(i * num_items) // count for i in range(count)]


def monitor_due(step: int, recipe: Recipe, run_steps: int) -> bool:
    """Whether the label-free monitors run after the 1-based step count ``step`` (the same on every rank)."""
    every = recipe.train.monitor_every
    return every is not None and (step % every == 0 or step == run_steps)


def knn_due(step: int, recipe: Recipe, steps_per_epoch: int) -> bool:
    """Whether the kNN monitor runs after step count ``step``: at the end of every ``monitor_knn_every_epochs``-th
    epoch."""
    every = recipe.train.monitor_knn_every_epochs
    return every is not None and step % steps_per_epoch == 0 and (step // steps_per_epoch) % every == 0


@torch.no_grad()
def pooled_features(encoder: Encoder, images: Tensor, device: torch.device, chunk: int,
                    autocast: Callable[[], Any] | None = None) -> Tensor:
    """``(N, D)`` float32 features ``encoder.pool(encoder(x))`` of ``images`` ``(N, C, H, W)`` (any device), in
    chunks of ``chunk``, with the encoder in eval mode (its mode is restored); ``autocast()`` gives the context
    the forward runs in (the training precision), None: full precision."""
    was_training = encoder.training
    encoder.eval()
    try:
        out = []
        for start in range(0, images.shape[0], chunk):
            x = images[start:start + chunk].to(device, non_blocking=True)
            with autocast() if autocast is not None else contextlib.nullcontext():
                out.append(encoder.pool(encoder(x)).float())  # (b, D)
        return torch.cat(out)
    finally:
        encoder.train(was_training)


def _stack(dataset: Dataset, indices: list[int]) -> tuple[Tensor, Tensor]:
    items = [dataset[i] for i in indices]
    return torch.stack([im for im, _ in items]), torch.tensor([int(lb) for _, lb in items], dtype=torch.long)


class TrainingMonitor:
    """The fixed monitor batch (and kNN subsets) of a run and the computation of the monitor values.

    Built by rank 0 before the loop: ``TrainingMonitor(recipe, encoder, device, autocast)``; called as
    ``monitor(knn=...)`` on a monitor step, it returns ``{"rankme", "repr_std", "repr_std_norm"[, "knn_acc"]}``
    as Python floats (the host sync of a monitor step).
    """

    def __init__(self, recipe: Recipe, encoder: Encoder, device: torch.device,
                 autocast: Callable[[], Any] | None = None):
        with torch.random.fork_rng(devices=[]):  # reading items must not move the training RNG
            self._setup(recipe, encoder, device, autocast)

    def _setup(self, recipe: Recipe, encoder: Encoder, device: torch.device,
               autocast: Callable[[], Any] | None) -> None:
        from jepaflow.engine.build import build_dataset

        cfg = recipe.train
        self.encoder, self.device, self.autocast = encoder, device, autocast
        self.chunk = min(cfg.monitor_samples, recipe.probe.batch_size)
        self.knn_k, self.knn_temperature = recipe.probe.knn_k, recipe.probe.knn_temperature
        self.note: str | None = None
        train_ds = build_dataset(recipe, "train", augment=False)
        self.images, _ = _stack(train_ds, evenly_spaced(len(train_ds), cfg.monitor_samples))
        # The kNN subsets are read when scored (they may be thousands of full-size images): data sets + indices.
        self.knn_sets: tuple[Dataset, list[int], Dataset, list[int]] | None = None
        if cfg.monitor_knn_every_epochs is not None:
            if getattr(train_ds, "num_classes", None) is None:
                self.note = "the data set has no labels: the kNN monitor is off"
            else:
                test_ds = build_dataset(recipe, "test", augment=False)
                n = cfg.monitor_knn_samples
                self.knn_sets = (train_ds, evenly_spaced(len(train_ds), n), test_ds, evenly_spaced(len(test_ds), n))
                self.num_classes = int(train_ds.num_classes)

    def features(self, images: Tensor) -> Tensor:
        return pooled_features(self.encoder, images, self.device, self.chunk, self.autocast)

    def dataset_features(self, dataset: Dataset, indices: list[int]) -> tuple[Tensor, Tensor]:
        """Features ``(n, D)`` and labels ``(n,)`` of ``dataset[indices]``, read chunk by chunk."""
        feats, labels = [], []
        for start in range(0, len(indices), self.chunk):
            images, lab = _stack(dataset, indices[start:start + self.chunk])
            feats.append(self.features(images))
            labels.append(lab)
        return torch.cat(feats), torch.cat(labels).to(self.device)

    def __call__(self, knn: bool = False) -> dict[str, float]:
        with torch.random.fork_rng(devices=[]):
            feats = self.features(self.images)  # (N, D)
            values = torch.stack([rankme(feats), feature_std(feats), feature_std(feats, normalize=True)])
            out = dict(zip(("rankme", "repr_std", "repr_std_norm"), values.tolist()))
            if knn and self.knn_sets is not None:
                from jepaflow.probes.knn import knn_accuracy

                train_ds, bank_idx, test_ds, query_idx = self.knn_sets
                bank_x, bank_y = self.dataset_features(train_ds, bank_idx)
                query_x, query_y = self.dataset_features(test_ds, query_idx)
                out["knn_acc"] = knn_accuracy(bank_x, bank_y, query_x, query_y, k=self.knn_k,
                                              temperature=self.knn_temperature, num_classes=self.num_classes)
        return out


__all__ = ["TrainingMonitor", "monitor_due", "knn_due", "pooled_features", "evenly_spaced"]
