"""The probe protocol end to end on synthetic images: the probe.json document, the feature cache (the encoder is
not run again), a damaged cache entry, and hyper-parameter selection that never reads the test split."""

from __future__ import annotations

import json

import pytest
import torch
from probe_helpers import CountingEncoder, TensorDataset

from jepaflow.config import ProbeConfig
from jepaflow.probes.cache import FeatureCache
from jepaflow.probes.data import ProbeData
from jepaflow.probes.evaluate import (
    SCHEMA,
    SCHEMA_VERSION,
    accuracies,
    evaluate_features,
    load_or_extract,
    probe_encoder,
    summary_line,
    write_probe_json,
)
from jepaflow.probes.features import SplitFeatures
from jepaflow.probes.sources import PixelFeatures

FAST = dict(linear_C=[0.1, 1.0], attentive_lr=[3e-3], attentive_weight_decay=[1e-3], attentive_epochs=2,
            attentive_batch_size=32, lowshot_per_class=[1, 3], lowshot_fractions=[0.1], lowshot_draws=3)


def shape_images(n: int, seed: int, num_classes: int = 3):
    """``(n, 3, 8, 8)`` noise images; class ``c`` brightens colour channel ``c`` (a signal that survives mean
    pooling over patches)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % num_classes
    images = torch.randn(n, 3, 8, 8, generator=g)
    images[torch.arange(n), labels] += 1.0
    return images, labels


def toy_data(n_train=240, n_test=90) -> ProbeData:
    xtr, ytr = shape_images(n_train, 0)
    xte, yte = shape_images(n_test, 1)
    return ProbeData({"name": "toy", "n": n_train}, TensorDataset(xtr, ytr, 3), TensorDataset(xte, yte, 3), 3)


def test_probe_json_document(tmp_path):
    data, enc = toy_data(), CountingEncoder()
    cfg = ProbeConfig(kinds=["linear", "knn", "attentive", "lowshot"], batch_size=64, **FAST)
    doc = probe_encoder(enc, data, cfg, source={"kind": "test", "spec": "toy"}, device="cpu")
    assert doc["schema"] == SCHEMA and doc["version"] == SCHEMA_VERSION
    assert doc["source"]["content_hash"].startswith("sha256:") and doc["source"]["layers"] == "last"
    assert doc["source"]["feature_dim"] == 16 and doc["source"]["token_shape"] == [4, 16]
    assert doc["data"]["splits"] == {"train": 240, "fit": 216, "val": 24, "test": 90}
    assert doc["settings"]["kinds"] == ["linear", "knn", "attentive", "lowshot"]
    assert not {"enabled", "random_init_baseline", "batch_size"} & set(doc["settings"])
    assert doc["environment"]["batch_size"] == 64
    probes = doc["probes"]
    for kind in ("linear", "knn", "attentive"):
        assert 0 <= probes[kind]["accuracy"] <= 1 and probes[kind]["seconds"] >= 0
        assert abs(probes[kind]["accuracy"] * 90 - round(probes[kind]["accuracy"] * 90)) < 1e-4  # k / 90
    assert probes["linear"]["accuracy"] > 0.8  # the quadrant colour is linearly readable
    assert probes["linear"]["hyperparameters"]["C"] in (0.1, 1.0)
    assert set(probes["linear"]["val_accuracies"]) == {"C=0.1", "C=1"}
    assert probes["linear"]["solver"]["refit"]["converged"]
    assert set(probes["attentive"]["hyperparameters"]) >= {"lr", "weight_decay", "heads"}
    low = probes["lowshot"]["settings"]
    assert list(low) == ["1_per_class", "3_per_class", "10%"]
    assert low["3_per_class"]["labels"] == [9, 9, 9] and len(low["1_per_class"]["accuracies"]) == 3
    m = low["3_per_class"]
    assert m["mean"] == pytest.approx(sum(m["accuracies"]) / 3)
    assert doc["seconds"]["total"] >= doc["seconds"]["features"]
    path = write_probe_json(doc, tmp_path / "out" / "probe.json")
    assert json.loads(path.read_text()) == json.loads(json.dumps(doc))
    assert set(accuracies(doc)) == {"linear", "knn", "attentive", "lowshot:1_per_class", "lowshot:3_per_class",
                                    "lowshot:10%"}
    assert summary_line(doc).startswith("linear ")


def test_second_probe_reads_the_cache_and_does_not_run_the_encoder(tmp_path):
    data, enc = toy_data(), CountingEncoder()
    cfg = ProbeConfig(kinds=["linear", "knn", "attentive"], batch_size=64, **FAST)
    first = probe_encoder(enc, data, cfg, source={"kind": "test"}, cache=FeatureCache(tmp_path))
    calls = enc.calls
    assert calls > 0 and first["cache"] == {"train": "miss", "test": "miss"}
    cache = FeatureCache(tmp_path)
    second = probe_encoder(enc, data, cfg, source={"kind": "test"}, cache=cache)
    assert enc.calls == calls  # features and tokens came from disk
    assert second["cache"] == {"train": "hit", "test": "hit"} and len(cache.hits) == 4
    assert accuracies(second) == accuracies(first)
    # The same weights in another module instance share the entries (the key is the content, not the object).
    twin = CountingEncoder()
    probe_encoder(twin, data, cfg.model_copy(update={"kinds": ("knn",)}), source={"kind": "test"},
                  cache=FeatureCache(tmp_path))
    assert twin.calls == 0
    # Other weights, other layers or another data section: computed afresh.
    other = CountingEncoder(seed=1)
    probe_encoder(other, data, cfg.model_copy(update={"kinds": ("knn",)}), source={"kind": "test"},
                  cache=FeatureCache(tmp_path))
    assert other.calls > 0
    calls = enc.calls
    probe_encoder(enc, data, cfg.model_copy(update={"kinds": ("knn",), "layers": "last4"}), source={"kind": "test"},
                  cache=FeatureCache(tmp_path))
    assert enc.calls > calls
    calls = enc.calls  # the role is part of the key too (a run's target and context encoders start equal)
    probe_encoder(enc, data, cfg.model_copy(update={"kinds": ("knn",)}), source={"kind": "test", "role": "context"},
                  cache=FeatureCache(tmp_path))
    assert enc.calls > calls
    calls = enc.calls
    other_data = ProbeData({**data.section, "n": 1}, data.train, data.test, 3)  # another resolved data section
    probe_encoder(enc, other_data, cfg.model_copy(update={"kinds": ("knn",)}), source={"kind": "test"},
                  cache=FeatureCache(tmp_path))
    assert enc.calls > calls


def test_damaged_cache_entry_is_recomputed_not_fatal(tmp_path):
    data, enc = toy_data(), CountingEncoder()
    cfg = ProbeConfig(kinds=["knn"], batch_size=64)
    first = probe_encoder(enc, data, cfg, source={"kind": "test"}, cache=FeatureCache(tmp_path))
    for entry in tmp_path.glob("*.pt"):
        entry.write_bytes(entry.read_bytes()[: 100])  # truncated
    calls = enc.calls
    with pytest.warns(RuntimeWarning, match="unreadable"):
        again = probe_encoder(enc, data, cfg, source={"kind": "test"}, cache=FeatureCache(tmp_path))
    assert enc.calls > calls and accuracies(again) == accuracies(first)
    calls = enc.calls
    probe_encoder(enc, data, cfg, source={"kind": "test"}, cache=FeatureCache(tmp_path))  # rewritten: a hit
    assert enc.calls == calls


def test_model_selection_never_reads_the_test_split():
    data = toy_data()
    cfg = ProbeConfig(kinds=["linear", "attentive", "lowshot"], batch_size=64, **FAST)
    train, test, _, _ = load_or_extract(CountingEncoder(), data, cfg, "sha256:x", torch.device("cpu"), None,
                                        pooled=True, tokens=True, log=print)
    a = evaluate_features(train, test, cfg, 3)
    g = torch.Generator().manual_seed(5)
    noise = SplitFeatures(torch.randint(0, 3, test.labels.shape, generator=g),
                          torch.randn(test.pooled.shape, generator=g) * 50,
                          torch.randn(test.tokens.shape, generator=g).half())
    b = evaluate_features(train, noise, cfg, 3)
    for kind in ("linear", "attentive"):
        assert a["probes"][kind]["hyperparameters"] == b["probes"][kind]["hyperparameters"]
        assert a["probes"][kind]["val_accuracies"] == b["probes"][kind]["val_accuracies"]
        assert a["probes"][kind]["accuracy"] != b["probes"][kind]["accuracy"]  # the test split is what changed
    for name, setting in a["probes"]["lowshot"]["settings"].items():
        other = b["probes"]["lowshot"]["settings"][name]
        assert setting["C"] == other["C"] and setting["val_accuracies"] == other["val_accuracies"]


def test_pixels_skip_the_attentive_probe_with_a_note():
    data = toy_data()
    doc = probe_encoder(PixelFeatures(3, 8), data, ProbeConfig(kinds=["knn", "attentive"]), source={"kind": "pixels"})
    assert set(doc["probes"]) == {"knn"} and "attentive" in doc["skipped"]
    assert doc["source"]["feature_dim"] == 3 * 8 * 8


def test_random_init_baseline_is_reported_beside():
    data = toy_data()
    doc = probe_encoder(CountingEncoder(), data, ProbeConfig(kinds=["knn"]), source={"kind": "test"},
                        baseline=CountingEncoder(seed=3))
    base = doc["baselines"]["random_init"]
    assert base["source"]["kind"] == "random_init" and base["source"]["content_hash"] != doc["source"]["content_hash"]
    assert set(accuracies(doc)) == {"knn", "knn_random_init"}
    assert "random init" in summary_line(doc)


def test_every_probe_is_at_chance_on_random_labels():
    """Labels drawn independently of the images on both splits: there is nothing to learn, so every probe must land
    near chance (1/3; the std of an accuracy on 600 test items is 0.019). A probe that read the test labels, or
    whose selection leaked, would not."""
    xtr, _ = shape_images(600, 0)
    xte, _ = shape_images(600, 1)
    g = torch.Generator().manual_seed(7)
    ytr, yte = torch.randint(0, 3, (600,), generator=g), torch.randint(0, 3, (600,), generator=g)
    data = ProbeData({"name": "toy-random"}, TensorDataset(xtr, ytr, 3), TensorDataset(xte, yte, 3), 3)
    cfg = ProbeConfig(kinds=["linear", "knn", "attentive", "lowshot"], batch_size=200,
                      **{**FAST, "lowshot_per_class": [5], "lowshot_fractions": []})
    doc = probe_encoder(CountingEncoder(), data, cfg, source={"kind": "test"})
    for name, acc in accuracies(doc).items():
        assert abs(acc - 1 / 3) < 0.08, (name, acc)


def test_token_sets_that_cannot_fit_in_memory_are_refused_before_extraction():
    from jepaflow.errors import JepaflowError

    enc = CountingEncoder()
    enc.embed_dim = 1 << 40  # as if: 4 tokens x 2**40 dims x 2 bytes per image
    data = toy_data()
    with pytest.raises(JepaflowError, match="probe.train_samples"):
        probe_encoder(enc, data, ProbeConfig(kinds=["attentive"]), source={"kind": "test"})
    assert enc.calls == 0
