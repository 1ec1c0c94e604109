"""Weighted k-nearest-neighbour probe on frozen features.

Cosine similarity, the ``k`` most similar train items vote for their label with weight ``exp(sim / T)``
(Wu et al., "Unsupervised Feature Learning via Non-Parametric Instance Discrimination", CVPR 2018; the same
classifier as DINO's ``eval_knn.py:knn_classifier``, Caron et al. 2021). Test items are processed in chunks of
rows of the similarity matrix: one matmul + top-k per chunk, no loop over items.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

#: elements of one chunk of the (test x train) similarity matrix: 2**25 float32 = 128 MiB
_CHUNK_ELEMENTS = 1 << 25


def knn_predict(
    train_feats: Tensor,
    train_labels: Tensor,
    test_feats: Tensor,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int | None = None,
) -> Tensor:
    """Predicted labels ``(M,)`` int64 of ``test_feats`` ``(M, D)`` from ``train_feats`` ``(N, D)`` and
    ``train_labels`` ``(N,)`` (int, 0..C-1). Runs on the features' device; ``k`` is capped at ``N``.
    Vote ties go to the lowest label (``argmax``)."""
    if train_feats.shape[0] == 0:
        raise ValueError("kNN needs at least one train item")
    if num_classes is None:
        num_classes = int(train_labels.max()) + 1
    k = min(k, train_feats.shape[0])
    train = F.normalize(train_feats.float(), dim=1)
    test = F.normalize(test_feats.to(train.device, torch.float32), dim=1)
    labels = train_labels.to(train.device, torch.long)
    chunk = chunk_size or max(1, _CHUNK_ELEMENTS // train.shape[0])
    preds = torch.empty(test.shape[0], dtype=torch.long, device=train.device)
    for start in range(0, test.shape[0], chunk):
        sim = test[start : start + chunk] @ train.T  # (m, N) cosine similarities
        top_sim, top_idx = sim.topk(k, dim=1)  # (m, k)
        weights = (top_sim / temperature).exp_()
        votes = torch.zeros(sim.shape[0], num_classes, dtype=weights.dtype, device=train.device)
        votes.scatter_add_(1, labels[top_idx], weights)  # (m, C): summed weight per class
        preds[start : start + chunk] = votes.argmax(dim=1)
    return preds


def knn_accuracy(
    train_feats: Tensor,
    train_labels: Tensor,
    test_feats: Tensor,
    test_labels: Tensor,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
) -> float:
    """Top-1 accuracy in [0, 1] of the weighted kNN classifier (see :func:`knn_predict`)."""
    if num_classes is None:
        num_classes = int(max(int(train_labels.max()), int(test_labels.max()))) + 1
    preds = knn_predict(train_feats, train_labels, test_feats, k, temperature, num_classes)
    return (preds == test_labels.to(preds.device)).float().mean().item()
