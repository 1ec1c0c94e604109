"""Weighted kNN probe: against a brute-force reference, on separable and structureless data, scale invariance."""

from __future__ import annotations

import pytest
import torch
from probe_helpers import gaussian_blobs

from jepaflow.probes.knn import knn_accuracy, knn_predict


def knn_reference(train, train_labels, test, k, temperature, num_classes):
    """One test item at a time, in float64: the weighted vote written out literally."""
    preds = []
    for x in test.double():
        sims = torch.stack([torch.dot(x, t) / (x.norm() * t.norm()) for t in train.double()])
        order = sorted(range(len(sims)), key=lambda j: -sims[j].item())[:k]
        votes = [0.0] * num_classes
        for j in order:
            votes[int(train_labels[j])] += torch.exp(sims[j] / temperature).item()
        preds.append(max(range(num_classes), key=lambda c: (votes[c], -c)))  # ties -> lowest label
    return torch.tensor(preds)


@pytest.mark.parametrize("k,temperature,chunk", [(5, 0.07, 3), (1, 0.1, None), (40, 1.0, 7)])
def test_knn_matches_brute_force_reference(k, temperature, chunk):
    train, train_labels = gaussian_blobs(10, 3, 6, spread=1.0, seed=0)  # overlapping classes: votes matter
    test, _ = gaussian_blobs(7, 3, 6, spread=1.0, seed=1)
    got = knn_predict(train.double(), train_labels, test.double(), k, temperature, 3, chunk_size=chunk)
    expected = knn_reference(train, train_labels, test, min(k, len(train)), temperature, 3)
    assert torch.equal(got, expected)
    assert 0 < (got != got[0]).sum() < len(got)  # a non-trivial case: several classes predicted


def test_knn_separable_and_random_labels():
    train, train_labels = gaussian_blobs(200, 4, 16, spread=8.0, seed=0)
    test, test_labels = gaussian_blobs(100, 4, 16, spread=8.0, seed=1)
    assert knn_accuracy(train, train_labels, test, test_labels, k=20) > 0.95
    # No class structure at all (spread 0): chance, 0.25 (std of the estimate ~0.02 at 400 test items).
    train, train_labels = gaussian_blobs(200, 4, 16, spread=0.0, seed=0)
    test, test_labels = gaussian_blobs(100, 4, 16, spread=0.0, seed=1)
    assert abs(knn_accuracy(train, train_labels, test, test_labels, k=20) - 0.25) < 0.08


def test_knn_is_scale_invariant_per_item():
    train, train_labels = gaussian_blobs(30, 3, 8, spread=2.0, seed=0)
    test, _ = gaussian_blobs(10, 3, 8, spread=2.0, seed=1)
    scales = torch.rand(len(train), 1, generator=torch.Generator().manual_seed(2)) * 10 + 0.1
    torch.testing.assert_close(knn_predict(train, train_labels, test), knn_predict(train * scales, train_labels, test))
