"""TimmCNNEncoder: a timm CNN's last feature map as tokens (offline, no masking)."""

from __future__ import annotations

import socket

import pytest
import timm
import torch
from pydantic import ValidationError
from safetensors.torch import save_file

from jepaflow.encoders.timm_cnn import NO_MASKING, TimmCNNEncoder, feature_map_to_tokens
from jepaflow.errors import JepaflowError
from jepaflow.registry import get_plugin


def resnet18(img_size: int, in_chans: int = 3, **fields) -> TimmCNNEncoder:
    return TimmCNNEncoder(TimmCNNEncoder.Config(model_name="resnet18", img_size=img_size, in_chans=in_chans,
                                                **fields))


@pytest.fixture(scope="module")
def encoder32():
    torch.manual_seed(0)
    return resnet18(32).eval()


def test_builds_offline_at_32_and_28_px(monkeypatch, encoder32):
    def no_network(*args, **kwargs):
        raise AssertionError("the CNN encoder must never touch the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    assert (encoder32.embed_dim, encoder32.patch_size, encoder32.grid_size) == (512, 32, (1, 1))
    grey = resnet18(28, in_chans=1)  # Fashion-MNIST: 28 -> 14 -> 7 -> 4 -> 2 -> 1
    assert (grey.grid_size, grey.num_patches, grey.in_chans) == ((1, 1), 1, 1)
    assert grey.training  # the grid probe ran in eval mode and restored the flag
    big = resnet18(64)
    assert big.grid_size == (2, 2)
    assert get_plugin("encoder", "timm_cnn") is TimmCNNEncoder


def test_tokens_are_the_feature_map_row_major(encoder32):
    images = torch.randn(2, 3, 64, 64)
    tokens = encoder32(images)
    fmap = encoder32.model.forward_features(images)  # (2, 512, 2, 2)
    assert tokens.shape == (2, 4, 512)
    for i in range(2):
        for j in range(2):
            torch.testing.assert_close(tokens[:, i * 2 + j], fmap[:, :, i, j], atol=0, rtol=0)
    nhwc = fmap.permute(0, 2, 3, 1)
    torch.testing.assert_close(feature_map_to_tokens(nhwc, channels_last=True), tokens, atol=0, rtol=0)
    assert encoder32(torch.randn(2, 3, 32, 32)).shape == (2, 1, 512)


def test_pool_equals_timm_global_average_pooling(encoder32):
    reference = timm.create_model("resnet18", pretrained=False, num_classes=0, global_pool="avg").eval()
    reference.load_state_dict(encoder32.model.state_dict())
    images = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        pooled = encoder32.pool(encoder32(images))
        expected = reference(images)
    assert pooled.shape == (3, 512)
    torch.testing.assert_close(pooled, expected, atol=1e-5, rtol=1e-5)


def test_keep_raises(encoder32):
    images = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match="cannot drop patches"):
        encoder32(images, keep=torch.zeros(1, 1, dtype=torch.long))
    assert "ViT" in NO_MASKING
    with pytest.raises(TypeError):
        encoder32.forward_layers(images, 1)


def test_gradients_reach_the_first_convolution():
    enc = resnet18(32)
    enc(torch.randn(2, 3, 32, 32)).sum().backward()
    assert enc.model.conv1.weight.grad is not None and enc.model.conv1.weight.grad.abs().sum() > 0


def test_local_checkpoint_with_classifier_is_loaded(tmp_path):
    torch.manual_seed(1)
    source = timm.create_model("resnet18", pretrained=False, num_classes=10)
    path = tmp_path / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    enc = resnet18(32, checkpoint=str(path))
    torch.testing.assert_close(enc.model.conv1.weight, source.conv1.weight, atol=0, rtol=0)
    torch.save({"state_dict": {"module." + k: v for k, v in source.state_dict().items()}}, tmp_path / "w.pt")
    enc2 = resnet18(32, checkpoint=str(tmp_path / "w.pt"))
    torch.testing.assert_close(enc2.model.layer4[1].conv2.weight, source.layer4[1].conv2.weight, atol=0, rtol=0)
    with pytest.raises(JepaflowError, match="does not match"):
        wrong = timm.create_model("resnet34", pretrained=False, num_classes=0)
        save_file({k: v.contiguous() for k, v in wrong.state_dict().items()}, str(tmp_path / "r34.safetensors"))
        resnet18(32, checkpoint=str(tmp_path / "r34.safetensors"))


def test_config_and_build_errors():
    with pytest.raises(ValidationError, match="no model named"):
        TimmCNNEncoder.Config(model_name="resnet_does_not_exist")
    with pytest.raises(JepaflowError, match="may not set"):
        resnet18(32, model_kwargs={"global_pool": "avg"})
    with pytest.raises(JepaflowError, match="not a \\(B, C, h, w\\) feature map"):
        TimmCNNEncoder(TimmCNNEncoder.Config(
            model_name="vit_tiny_patch16_224", img_size=16,
            model_kwargs={"img_size": 16, "patch_size": 8, "embed_dim": 16, "depth": 1, "num_heads": 1}))
    with pytest.raises(JepaflowError, match="cannot encode 16 px images"):
        TimmCNNEncoder(TimmCNNEncoder.Config(
            model_name="vit_tiny_patch16_224", img_size=16,
            model_kwargs={"patch_size": 8, "embed_dim": 16, "depth": 1, "num_heads": 1}))
