"""Feature cache: content hashes of encoders, keys, the cache root, and writes that cannot fail a probe."""

from __future__ import annotations

import pytest
import torch
from probe_helpers import CountingEncoder

from jepaflow.probes.cache import FeatureCache, cache_root, encoder_hash


def test_encoder_hash_follows_the_weights_not_the_object():
    a, b = CountingEncoder(seed=0), CountingEncoder(seed=0)
    assert encoder_hash(a) == encoder_hash(b)
    with torch.no_grad():
        b.proj.bias[0] += 1e-6
    assert encoder_hash(a) != encoder_hash(b)
    assert encoder_hash(a) != encoder_hash(CountingEncoder(seed=1))


def test_encoder_hash_includes_the_plugin_config_but_not_init_checkpoints():
    from jepaflow.encoders.vit import VisionTransformerEncoder

    torch.manual_seed(0)
    cfg = VisionTransformerEncoder.Config(size="tiny", patch_size=4, img_size=8, embed_dim=16, depth=1, num_heads=2)
    enc = VisionTransformerEncoder(cfg)
    same_weights_other_heads = VisionTransformerEncoder(cfg.model_copy(update={"num_heads": 4}))
    same_weights_other_heads.load_state_dict(enc.state_dict())
    assert encoder_hash(enc) != encoder_hash(same_weights_other_heads)  # same tensors, other outputs


def test_cache_root_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("JEPAFLOW_CACHE", str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env"
    assert cache_root(tmp_path / "arg") == tmp_path / "arg"  # the CLI option wins
    monkeypatch.setenv("JEPAFLOW_CACHE", "off")
    assert cache_root() is None
    monkeypatch.delenv("JEPAFLOW_CACHE")
    assert str(cache_root()).endswith(".cache/jepaflow/features")


def test_put_get_roundtrip_and_keys(tmp_path):
    cache = FeatureCache(tmp_path)
    key = cache.key({"encoder": "sha256:a", "split": "train"})
    assert key == FeatureCache.key({"split": "train", "encoder": "sha256:a"})  # order-independent
    assert key != FeatureCache.key({"encoder": "sha256:a", "split": "test"})
    assert cache.get(key, ("pooled",)) is None
    cache.put(key, {"pooled": torch.arange(6.0).reshape(2, 3), "labels": torch.tensor([0, 1])}, {"split": "train"})
    got = cache.get(key, ("pooled", "labels"))
    assert torch.equal(got["pooled"], torch.arange(6.0).reshape(2, 3)) and cache.hits == [str(cache.path(key))]
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temporary file
    with pytest.warns(RuntimeWarning, match="missing tokens"):
        assert cache.get(key, ("tokens",)) is None
    # an entry under the wrong name (e.g. copied by hand) is not trusted
    other = cache.key({"x": 1})
    cache.path(key).rename(cache.path(other))
    with pytest.warns(RuntimeWarning, match="does not hold this key"):
        assert cache.get(other, ("pooled",)) is None


def test_unwritable_cache_is_a_warning(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    cache = FeatureCache(blocker / "sub")
    with pytest.warns(RuntimeWarning, match="continuing without it"):
        cache.put("k", {"pooled": torch.zeros(1)}, {})
    assert FeatureCache(None).get("k", ("pooled",)) is None  # caching off: nothing, silently
