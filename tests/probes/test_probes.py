"""Frozen-feature probes: kNN against a brute-force reference, linear probe invariances, feature extraction."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from jepaflow.config import ProbeConfig
from jepaflow.datasets.synthetic import SyntheticShapesDataset
from jepaflow.errors import DataError
from jepaflow.probes.features import (
    ProbeResult,
    extract_features,
    probe_encoder,
    run_probes,
    subset_indices,
)
from jepaflow.probes.knn import knn_accuracy, knn_predict
from jepaflow.probes.linear import linear_probe_accuracy, standardize


def gaussian_blobs(n_per_class: int, num_classes: int, dim: int, spread: float, seed: int):
    """Class ``c`` ~ N(mu_c, I), ``mu_c`` random of norm ``spread`` (the same for every ``seed``: train and test
    share them); ``seed`` draws the samples. Returns (feats (N, D), labels (N,))."""
    means = torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(1234))
    means = means / means.norm(dim=1, keepdim=True) * spread
    labels = torch.arange(num_classes).repeat_interleave(n_per_class)
    feats = means[labels] + torch.randn(len(labels), dim, generator=torch.Generator().manual_seed(seed))
    return feats, labels


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


# ------------------------------------------------------------------------------------------------ kNN
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


# ------------------------------------------------------------------------------------------------ linear
def test_linear_probe_separable_random_labels_and_determinism():
    train, train_labels = gaussian_blobs(200, 4, 16, spread=6.0, seed=0)
    test, test_labels = gaussian_blobs(100, 4, 16, spread=6.0, seed=1)
    acc = linear_probe_accuracy(train, train_labels, test, test_labels, epochs=100)
    assert acc > 0.95
    assert linear_probe_accuracy(train, train_labels, test, test_labels, epochs=100) == acc
    train, train_labels = gaussian_blobs(200, 4, 16, spread=0.0, seed=0)
    test, test_labels = gaussian_blobs(100, 4, 16, spread=0.0, seed=1)
    assert abs(linear_probe_accuracy(train, train_labels, test, test_labels, epochs=100) - 0.25) < 0.08


def test_linear_probe_trains_under_no_grad_and_inference_mode():
    train, train_labels = gaussian_blobs(20, 2, 4, spread=6.0, seed=0)
    expected = linear_probe_accuracy(train, train_labels, train, train_labels, epochs=30)
    with torch.no_grad():
        assert linear_probe_accuracy(train, train_labels, train, train_labels, epochs=30) == expected
    with torch.inference_mode():
        x, y = train.clone(), train_labels.clone()  # inference tensors
        assert linear_probe_accuracy(x, y, x, y, epochs=30) == expected
    assert expected > 0.95


def test_linear_probe_is_invariant_to_per_dimension_affine_maps():
    """Standardizing with train statistics makes the probe blind to feature units and offsets."""
    train, train_labels = gaussian_blobs(50, 3, 10, spread=2.0, seed=0)
    test, test_labels = gaussian_blobs(30, 3, 10, spread=2.0, seed=1)
    g = torch.Generator().manual_seed(3)
    scale, shift = torch.rand(10, generator=g) * 100 + 0.01, torch.randn(10, generator=g) * 50
    a = standardize(train, test)
    b = standardize(train * scale + shift, test * scale + shift)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-4)
    assert linear_probe_accuracy(train, train_labels, test, test_labels, epochs=50) == linear_probe_accuracy(
        train * scale + shift, train_labels, test * scale + shift, test_labels, epochs=50
    )
    assert torch.allclose(a[0].mean(0), torch.zeros(10), atol=1e-5)
    assert torch.allclose(a[0].std(0, unbiased=False), torch.ones(10), atol=1e-4)


# ------------------------------------------------------------------------------------------------ features
class PatchMeanEncoder(nn.Module):
    """A toy encoder: 4x4 patches -> linear -> ReLU, tokens ``(B, N, D)``; records train/eval mode."""

    def __init__(self, channels: int = 3, dim: int = 16):
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Conv2d(channels, dim, kernel_size=4, stride=4)
        self.modes: list[bool] = []

    def forward(self, images):
        self.modes.append(self.training)
        return torch.relu(self.proj(images)).flatten(2).transpose(1, 2)


class ListDataset(torch.utils.data.Dataset):
    def __init__(self, images, labels, num_classes=None):
        self.images, self.labels, self.num_classes = images, labels, num_classes

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], int(self.labels[i])


def test_extract_features_mean_pools_tokens_in_eval_mode():
    g = torch.Generator().manual_seed(0)
    images, labels = torch.randn(10, 3, 8, 8, generator=g), torch.arange(10) % 3
    enc = PatchMeanEncoder()
    enc.train()
    feats, got_labels = extract_features(enc, ListDataset(images, labels), batch_size=4, device="cpu")
    assert enc.training and enc.modes == [False] * 3  # eval inside, restored after; 3 batches
    assert feats.shape == (10, 16) and feats.dtype == torch.float32 and not feats.requires_grad
    with torch.no_grad():
        torch.testing.assert_close(feats, enc(images).mean(dim=1))
    assert torch.equal(got_labels, labels)

    sub_feats, sub_labels = extract_features(enc, ListDataset(images, labels), 4, "cpu", max_items=5)
    idx = subset_indices(10, 5)
    assert idx == [0, 2, 4, 6, 8]
    torch.testing.assert_close(sub_feats, feats[idx])
    assert torch.equal(sub_labels, labels[idx])


def test_subset_indices_spread_over_class_sorted_data():
    assert subset_indices(7, None) == list(range(7)) and subset_indices(3, 10) == [0, 1, 2]
    labels = torch.arange(10).repeat_interleave(100)  # sorted by class, like an image folder
    idx = subset_indices(1000, 50)
    assert len(set(idx)) == 50 and torch.bincount(labels[idx]).tolist() == [5] * 10


def test_run_probes_on_synthetic_shapes():
    cfg_data = SyntheticShapesDataset.Config(num_train=96, num_test=48, image_size=16)
    train = SyntheticShapesDataset(cfg_data, split="train")
    test = SyntheticShapesDataset(cfg_data, split="test")
    cfg = ProbeConfig(enabled=True, train_samples=64, linear_epochs=20, batch_size=32)
    out = run_probes(PatchMeanEncoder(), train, test, cfg, device="cpu")
    assert set(out) == {"knn", "linear"} and all(0.0 <= v <= 1.0 for v in out.values())
    # Accuracies are multiples of 1/48 (48 test items).
    assert all(abs(v * 48 - round(v * 48)) < 1e-4 for v in out.values())

    result = probe_encoder(PatchMeanEncoder(), train, test, cfg.model_copy(update={"kinds": ["knn"]}), "cpu")
    assert isinstance(result, ProbeResult) and set(result.accuracies) == {"knn"}
    assert (result.num_train, result.num_test, result.feature_dim) == (64, 48, 16)
    assert result.accuracies["knn"] == out["knn"]  # deterministic end to end
    assert set(result.seconds) == {"features", "knn"}


def test_run_probes_needs_labels():
    unlabelled = ListDataset(torch.zeros(4, 3, 8, 8), [-1] * 4, num_classes=None)
    with pytest.raises(DataError, match="needs labels"):
        run_probes(PatchMeanEncoder(), unlabelled, unlabelled, ProbeConfig(), "cpu")
