"""TimmViTEncoder: a timm VisionTransformer run as a patch-token encoder (no class token, local weights only)."""

from __future__ import annotations

import socket

import pytest
import timm
import torch
from pydantic import ValidationError
from safetensors.torch import save_file

from jepaflow.encoders.timm_vit import TimmViTEncoder
from jepaflow.errors import JepaflowError
from jepaflow.hub import with_img_size

# A ViT-Ti shaped down for tests: 16 px images of 4 px patches (a 4x4 grid), width 48, 3 heads, 2 blocks.
TINY = {"patch_size": 4, "embed_dim": 48, "num_heads": 3, "depth": 2}


def tiny_config(**fields) -> TimmViTEncoder.Config:
    base = {"model_name": "vit_tiny_patch16_224", "img_size": 16, "model_kwargs": TINY}
    return TimmViTEncoder.Config(**{**base, **fields})


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return TimmViTEncoder(tiny_config()).eval()


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def test_builds_offline_as_a_patch_token_encoder(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the timm encoder must never touch the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    enc = TimmViTEncoder(tiny_config(in_chans=1, drop_path_rate=0.1))
    assert (enc.embed_dim, enc.patch_size, enc.grid_size, enc.in_chans, enc.num_heads) == (48, 4, (4, 4), 1, 3)
    assert enc.num_patches == 16 and enc.depth == 2
    model = enc.model
    assert model.cls_token is None and model.reg_token is None and model.num_prefix_tokens == 0
    assert isinstance(model.head, torch.nn.Identity) and model.pos_embed.shape == (1, 16, 48)
    assert model.blocks[1].drop_path1.drop_prob == pytest.approx(0.1)  # linear rule: last block gets the rate
    assert enc(torch.zeros(3, 1, 16, 16)).shape == (3, 16, 48)


def test_forward_equals_timm_forward_features(encoder, images):
    with torch.no_grad():
        out = encoder(images)
        want = encoder.model.forward_features(images)
    assert out.shape == (2, 16, 48)
    torch.testing.assert_close(out, want, atol=0, rtol=0)


def test_keep_gathers_after_positions(encoder, images):
    keep = torch.tensor([[0, 5, 10, 15], [3, 2, 1, 12]])
    with torch.no_grad():
        out = encoder(images, keep)
        # reference: position-added tokens gathered per row, then the blocks and the norm
        tokens = encoder.model._pos_embed(encoder.model.patch_embed(images))
        gathered = torch.stack([tokens[b, keep[b]] for b in range(2)])
        want = encoder.model.norm(encoder.model.blocks(gathered))
    torch.testing.assert_close(out, want, atol=1e-6, rtol=0)


def test_padded_keep_is_invisible_to_valid_tokens(encoder, images):
    # Row 0 keeps 5 patches; row 1 keeps 3, padded to 5 with index 0 and masked out by keep_valid.
    keep = torch.tensor([[1, 4, 6, 9, 13], [2, 7, 11, 0, 0]])
    valid = torch.tensor([[True] * 5, [True, True, True, False, False]])
    with torch.no_grad():
        padded = encoder(images, keep, valid)
        row0 = encoder(images[:1], keep[:1])
        row1 = encoder(images[1:], keep[1:, :3])
    assert torch.isfinite(padded).all()
    torch.testing.assert_close(padded[0], row0[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(padded[1, :3], row1[0], atol=1e-5, rtol=0)
    # without the mask the padding would leak into the valid tokens
    with torch.no_grad():
        leaky = encoder(images[1:], keep[1:])
    assert (leaky[0, :3] - row1[0]).abs().max() > 1e-3


def test_forward_layers_are_the_last_block_outputs(encoder, images):
    with torch.no_grad():
        layers = encoder.forward_layers(images, 2)
        out = encoder(images)
        first = encoder.model.blocks[0](encoder.embed_patches(images))
    assert len(layers) == 2 and all(t.shape == (2, 16, 48) for t in layers)
    torch.testing.assert_close(layers[0], first, atol=0, rtol=0)
    torch.testing.assert_close(encoder.model.norm(layers[-1]), out, atol=0, rtol=0)
    with pytest.raises(ValueError):
        encoder.forward_layers(images, 3)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_timm_weights_drop_class_token_rows(tmp_path, suffix):
    # An ordinary timm checkpoint: class token, its row in pos_embed, a 10-class head.
    torch.manual_seed(1)
    source = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16, num_classes=10, **TINY)
    state = source.state_dict()
    assert state["pos_embed"].shape == (1, 17, 48)
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    enc = TimmViTEncoder(tiny_config(checkpoint=str(path)))
    mine = enc.model.state_dict()
    torch.testing.assert_close(mine["pos_embed"], state["pos_embed"][:, 1:], atol=0, rtol=0)
    for name, value in mine.items():
        if name != "pos_embed":
            assert torch.equal(value, state[name]), name
    # the same weights at twice the resolution: the table (without its class row) is the one timm itself loads
    # into a model of that resolution (timm resizes the grid rows and keeps the class row apart)
    big = TimmViTEncoder(tiny_config(checkpoint=str(path), img_size=32))
    timm_big = timm.create_model("vit_tiny_patch16_224", pretrained=True, pretrained_cfg_overlay={"file": str(path)},
                                 img_size=32, num_classes=10, **TINY)
    assert timm_big.pos_embed.shape == (1, 65, 48)
    torch.testing.assert_close(big.model.pos_embed, timm_big.pos_embed[:, 1:], atol=0, rtol=0)
    assert not torch.allclose(big.model.pos_embed[:, :16], state["pos_embed"][:, 1:], atol=1e-3)  # really resized


def test_with_img_size_resizes_the_learned_table(encoder):
    big = with_img_size(encoder, 32)
    assert big.grid_size == (8, 8) and big.config.img_size == 32 and not big.training
    # timm's own rule for a learned table on a new grid (its models resample the same way at run time)
    want = timm.layers.resample_abs_pos_embed(encoder.model.pos_embed.detach(), [8, 8], num_prefix_tokens=0)
    torch.testing.assert_close(big.model.pos_embed.detach(), want, atol=0, rtol=0)
    assert torch.equal(big.model.blocks[1].mlp.fc2.weight, encoder.model.blocks[1].mlp.fc2.weight)
    assert big(torch.zeros(1, 3, 32, 32)).shape == (1, 64, 48)


def test_bad_configurations_raise_clear_errors(tmp_path):
    with pytest.raises(ValidationError, match="timm has no model named 'vit_nonexistent'"):
        tiny_config(model_name="vit_nonexistent")
    with pytest.raises(JepaflowError, match="not a VisionTransformer|patch-token ViT"):
        TimmViTEncoder(tiny_config(model_name="resnet18", model_kwargs={}))
    with pytest.raises(JepaflowError, match="may not set class_token"):
        TimmViTEncoder(tiny_config(model_kwargs={**TINY, "class_token": True}))
    with pytest.raises(JepaflowError, match="no timm weight file"):
        TimmViTEncoder(tiny_config(checkpoint=str(tmp_path / "absent.pth")))
    wrong = tmp_path / "wrong.pth"
    torch.save({"pos_embed": torch.zeros(1, 16, 48), "blocks.0.norm1.weight": torch.zeros(5)}, wrong)
    with pytest.raises(JepaflowError, match=r"missing: .*wrong shape: blocks.0.norm1.weight"):
        TimmViTEncoder(tiny_config(checkpoint=str(wrong)))


def test_serves_as_ijepa_encoder_and_round_trips_through_load_encoder(tmp_path, tiny_recipe):
    from jepaflow.config import load_recipe
    from jepaflow.engine.build import build_masker, build_objective
    from jepaflow.hub import load_encoder
    from jepaflow.interfaces import Batch

    timm_section = {"name": "timm_vit", "model_name": "vit_tiny_patch16_224", "img_size": 32,
                    "model_kwargs": {"patch_size": 8, "embed_dim": 48, "num_heads": 2, "depth": 2}}
    raw = tiny_recipe()
    raw["encoder"] = timm_section
    recipe = load_recipe(raw)
    torch.manual_seed(0)
    objective = build_objective(recipe)
    masks = build_masker(recipe)(4, objective.encoder.grid_size, torch.Generator().manual_seed(0))
    out = objective(Batch(images=torch.randn(4, 3, 32, 32), masks=masks))
    out.loss.backward()
    assert torch.isfinite(out.loss) and objective.encoder.model.patch_embed.proj.weight.grad is not None

    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    ckpt = {"format": "jepaflow-checkpoint", "recipe": recipe.to_dict(), "objective": objective.state_dict()}
    torch.save(ckpt, tmp_path / "run" / "checkpoints" / "last.pt")
    loaded = load_encoder(tmp_path / "run")
    assert isinstance(loaded, TimmViTEncoder)
    images = torch.randn(2, 3, 32, 32)
    objective.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), objective.target_encoder(images), atol=0, rtol=0)
