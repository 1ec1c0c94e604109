"""Frozen features of an encoder, and the probes run on them.

An image's feature is the mean of the encoder's output patch tokens, ``(B, N, D) -> (B, D)``: I-JEPA has no
[CLS] token and its linear evaluation uses average-pooled patch representations (Assran et al., CVPR 2023,
section 5 and appendix). The encoder is run in eval mode under ``torch.no_grad`` and left in the mode it was in.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from jepaflow.config import ProbeConfig
from jepaflow.errors import DataError
from jepaflow.probes.knn import knn_accuracy
from jepaflow.probes.linear import linear_probe_accuracy


def subset_indices(num_items: int, max_items: int | None) -> list[int]:
    """Indices of a deterministic subset of ``max_items`` items: evenly spaced over the data set.

    Evenly spaced rather than the first ``max_items``: folder data sets are stored class by class, and their
    first items would all share one label.
    """
    if max_items is None or max_items >= num_items:
        return list(range(num_items))
    return [(i * num_items) // max_items for i in range(max_items)]


@torch.no_grad()
def extract_features(
    encoder: nn.Module,
    dataset: torch.utils.data.Dataset,
    batch_size: int,
    device: torch.device | str,
    max_items: int | None = None,
    num_workers: int = 0,
    amp_dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor]:
    """Pooled features of ``dataset`` (items ``(image (C, H, W), label)``).

    Args:
        encoder: maps ``(B, C, H, W)`` to patch tokens ``(B, N, D)``; must already be on ``device``.
        dataset: read in order (see :func:`subset_indices` for ``max_items``), with a plain DataLoader.
        amp_dtype: run the encoder under autocast with this dtype (e.g. ``torch.bfloat16`` on CUDA); the
            features are returned in float32 either way.

    Returns ``(feats (N, D) float32, labels (N,) int64)``, on the CPU.
    """
    device = torch.device(device)
    indices = subset_indices(len(dataset), max_items)
    loader = DataLoader(
        Subset(dataset, indices),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )
    was_training = encoder.training
    encoder.eval()
    feats: Tensor | None = None
    labels = torch.empty(len(indices), dtype=torch.long)
    try:
        start = 0
        for images, batch_labels in loader:
            images = images.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                tokens = encoder(images)  # (B, N, D)
            pooled = tokens.float().mean(dim=1)  # (B, D)
            if feats is None:  # width known only now; filled on the device, copied to the host once
                feats = torch.empty(len(indices), pooled.shape[1], dtype=torch.float32, device=device)
            end = start + pooled.shape[0]
            feats[start:end] = pooled
            labels[start:end] = torch.as_tensor(batch_labels, dtype=torch.long)
            start = end
    finally:
        encoder.train(was_training)
    if feats is None:
        raise DataError("cannot extract features from an empty data set", "check the data section of the recipe")
    return feats.cpu(), labels


@dataclass(frozen=True)
class ProbeResult:
    """What the probes measured.

    Attributes:
        accuracies: probe kind (``"knn"``, ``"linear"``) -> top-1 test accuracy in [0, 1].
        num_train, num_test: labelled items used on each side.
        feature_dim: ``D``.
        seconds: wall time of ``"features"`` (both splits) and of each probe.
    """

    accuracies: dict[str, float]
    num_train: int
    num_test: int
    feature_dim: int
    seconds: dict[str, float] = field(default_factory=dict)


def evaluate_features(
    train_feats: Tensor,
    train_labels: Tensor,
    test_feats: Tensor,
    test_labels: Tensor,
    cfg: ProbeConfig,
    num_classes: int | None = None,
    device: torch.device | str = "cpu",
) -> ProbeResult:
    """Run the probes of ``cfg.kinds`` on given features (moved to ``device``)."""
    if num_classes is None:
        num_classes = int(max(int(train_labels.max()), int(test_labels.max()))) + 1
    train_feats, test_feats = train_feats.to(device), test_feats.to(device)
    train_labels, test_labels = train_labels.to(device), test_labels.to(device)
    accuracies: dict[str, float] = {}
    seconds: dict[str, float] = {}
    for kind in cfg.kinds:
        t0 = time.perf_counter()
        if kind == "knn":
            accuracies[kind] = knn_accuracy(
                train_feats, train_labels, test_feats, test_labels,
                k=cfg.knn_k, temperature=cfg.knn_temperature, num_classes=num_classes,
            )
        elif kind == "linear":
            accuracies[kind] = linear_probe_accuracy(
                train_feats, train_labels, test_feats, test_labels,
                epochs=cfg.linear_epochs, lr=cfg.linear_lr, weight_decay=cfg.linear_weight_decay,
                seed=0, num_classes=num_classes,
            )
        else:  # ProbeConfig validates kinds; this guards a config built without validation
            raise ValueError(f"unknown probe kind {kind!r}")
        seconds[kind] = time.perf_counter() - t0
    return ProbeResult(accuracies, len(train_labels), len(test_labels), train_feats.shape[1], seconds)


def probe_encoder(
    encoder: nn.Module,
    train_ds: torch.utils.data.Dataset,
    test_ds: torch.utils.data.Dataset,
    cfg: ProbeConfig,
    device: torch.device | str,
    num_workers: int = 0,
    amp_dtype: torch.dtype | None = None,
) -> ProbeResult:
    """Extract features of both splits (capped by ``cfg.train_samples`` / ``cfg.test_samples``), then run
    the probes of ``cfg.kinds``. The data sets should use the deterministic (``augment=False``) transform."""
    num_classes = getattr(train_ds, "num_classes", None)
    if num_classes is None:
        raise DataError(
            f"the probe needs labels, but data set {type(train_ds).__name__} has none (num_classes is None)",
            "probe on a labelled data set, or set probe.enabled: false",
        )
    t0 = time.perf_counter()
    train_feats, train_labels = extract_features(
        encoder, train_ds, cfg.batch_size, device, cfg.train_samples, num_workers, amp_dtype
    )
    test_feats, test_labels = extract_features(
        encoder, test_ds, cfg.batch_size, device, cfg.test_samples, num_workers, amp_dtype
    )
    t_features = time.perf_counter() - t0
    result = evaluate_features(train_feats, train_labels, test_feats, test_labels, cfg, num_classes, device)
    return ProbeResult(
        result.accuracies, result.num_train, result.num_test, result.feature_dim,
        {"features": t_features, **result.seconds},
    )


def run_probes(
    encoder: nn.Module,
    train_ds: torch.utils.data.Dataset,
    test_ds: torch.utils.data.Dataset,
    cfg: ProbeConfig,
    device: torch.device | str,
) -> dict[str, float]:
    """``{"knn": acc, "linear": acc}`` (the kinds in ``cfg.kinds``; accuracies in [0, 1]); see
    :func:`probe_encoder` for the details and timings."""
    return dict(probe_encoder(encoder, train_ds, test_ds, cfg, device).accuracies)
