"""Feature extraction: the encoder's own pooling, the last-4-blocks concatenation, tokens, eval mode, subsets."""

from __future__ import annotations

import pytest
import torch
from probe_helpers import CountingEncoder, TensorDataset

from jepaflow.encoders.vit import VisionTransformerEncoder
from jepaflow.errors import DataError, JepaflowError
from jepaflow.probes.features import check_layers, extract_features, pooled_features, subset_indices


def tiny_vit(depth=5) -> VisionTransformerEncoder:
    torch.manual_seed(0)
    return VisionTransformerEncoder(VisionTransformerEncoder.Config(
        size="tiny", patch_size=4, img_size=8, in_chans=3, embed_dim=16, depth=depth, num_heads=2))


def test_last_pools_the_final_tokens_with_the_encoders_pool():
    enc, images = tiny_vit(), torch.randn(6, 3, 8, 8)

    class MaxPool(VisionTransformerEncoder):
        def pool(self, tokens):
            return tokens.amax(dim=1)

    other = MaxPool(enc.config)
    other.load_state_dict(enc.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(pooled_features(enc.eval(), images), enc(images).mean(1))
        torch.testing.assert_close(pooled_features(other.eval(), images), enc(images).amax(1))  # not a fixed mean


def test_last4_concatenates_the_last_four_blocks_before_the_final_norm():
    enc, images = tiny_vit(depth=5).eval(), torch.randn(6, 3, 8, 8)
    with torch.no_grad():
        feats = pooled_features(enc, images, "last4")
        x = enc.embed_patches(images)
        outs = []
        for block in enc.blocks:
            x = block(x)
            outs.append(x.mean(1))
        torch.testing.assert_close(feats, torch.cat(outs[-4:], dim=1))
    assert feats.shape == (6, 64)


def test_last4_needs_four_blocks_and_the_capability():
    with pytest.raises(JepaflowError, match="needs 4 blocks, but this VisionTransformerEncoder has 2"):
        pooled_features(tiny_vit(depth=2), torch.randn(2, 3, 8, 8), "last4")

    class NoLayers(CountingEncoder):
        capabilities = frozenset()

    enc = NoLayers()
    with pytest.raises(JepaflowError, match="'intermediate_layers' capability"):
        pooled_features(enc, torch.randn(2, 3, 8, 8), "last4")
    assert enc.calls == 0  # refused before any image is encoded
    check_layers(tiny_vit(depth=4), "last4")  # no error


def test_extract_features_pooled_tokens_and_modes():
    g = torch.Generator().manual_seed(0)
    images, labels = torch.randn(10, 3, 8, 8, generator=g), torch.arange(10) % 3
    enc = CountingEncoder()
    enc.train()
    out = extract_features(enc, TensorDataset(images, labels, 3), batch_size=4, device="cpu", tokens=True)
    assert enc.training and enc.modes == [False] * 3  # eval inside, restored after; 3 batches, one pass each
    assert out.pooled.shape == (10, 16) and out.pooled.dtype == torch.float32
    assert out.tokens.shape == (10, 4, 16) and out.tokens.dtype == torch.float16
    with torch.no_grad():
        tokens = enc(images)
    torch.testing.assert_close(out.pooled, tokens.mean(1))
    torch.testing.assert_close(out.tokens, tokens.half())
    assert torch.equal(out.labels, labels)
    sub = extract_features(enc, TensorDataset(images, labels, 3), 4, "cpu", max_items=5)
    assert sub.tokens is None
    torch.testing.assert_close(sub.pooled, out.pooled[[0, 2, 4, 6, 8]])


def test_extract_features_refuses_empty_data_and_non_encoders():
    with pytest.raises(DataError, match="empty"):
        extract_features(CountingEncoder(), TensorDataset(torch.zeros(0, 3, 8, 8), torch.zeros(0), 3), 4, "cpu")
    with pytest.raises(TypeError, match="pool"):
        extract_features(torch.nn.Identity(), TensorDataset(torch.zeros(2, 3, 8, 8), torch.zeros(2), 3), 4, "cpu")


def test_subset_indices_spread_over_class_sorted_data():
    assert subset_indices(7, None) == list(range(7)) and subset_indices(3, 10) == [0, 1, 2]
    labels = torch.arange(10).repeat_interleave(100)  # sorted by class, like an image folder
    idx = subset_indices(1000, 50)
    assert len(set(idx)) == 50 and torch.bincount(labels[idx]).tolist() == [5] * 10
