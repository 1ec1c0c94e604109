"""Probe sources: jepaflow checkpoints (roles), official I-JEPA checkpoints, timm floors, raw pixels."""

from __future__ import annotations

import pytest
import torch

from jepaflow.config import load_recipe
from jepaflow.engine.build import build_objective
from jepaflow.errors import JepaflowError
from jepaflow.probes.cache import encoder_hash
from jepaflow.probes.sources import PixelFeatures, inspect_source, source_encoder

SECTION = {"name": "synthetic", "image_size": 32, "channels": 3}


def test_pixel_features_are_the_flattened_image():
    images = torch.randn(4, 3, 8, 8)
    enc = PixelFeatures(3, 8)
    assert enc.pool(enc(images)).shape == (4, 192)
    torch.testing.assert_close(enc.pool(enc(images)), images.flatten(1))
    assert not enc.has_tokens


def test_jepaflow_checkpoint_file_roles(tmp_path, tiny_recipe):
    recipe = load_recipe(tiny_recipe())
    torch.manual_seed(recipe.seed)
    objective = build_objective(recipe)
    path = tmp_path / "ckpt.pt"
    torch.save({"format": "jepaflow-checkpoint", "version": 1, "recipe": recipe.to_dict(),
                "objective": objective.state_dict(), "step": 7}, path)
    src = inspect_source(str(path))
    assert src.kind == "checkpoint" and src.run_dir is None and src.recipe["objective"]["name"] == "ijepa"
    enc, desc = source_encoder(src, None, SECTION, seed=0)
    assert desc["role"] == "target" and desc["step"] == 7 and not enc.training
    assert encoder_hash(enc) == encoder_hash(objective.representation_encoder())
    ctx, desc = source_encoder(src, "context", SECTION, seed=0)
    assert desc["role"] == "context" and encoder_hash(ctx) == encoder_hash(objective.encoders()["context"])
    with pytest.raises(JepaflowError, match="no encoder 'student'"):
        source_encoder(src, "student", SECTION, seed=0)
    with pytest.raises(JepaflowError, match="takes 3-channel images but the data gives 1"):
        source_encoder(src, None, {**SECTION, "channels": 1}, seed=0)


def test_official_checkpoint_roles(tmp_path):
    from jepaflow.encoders.vit import VisionTransformerEncoder

    cfg = VisionTransformerEncoder.Config(size="tiny", patch_size=16, img_size=32)
    target, context = VisionTransformerEncoder(cfg), VisionTransformerEncoder(cfg)
    path = tmp_path / "IN1K-vit.t.16.pth.tar"
    torch.save({"encoder": {f"module.{k}": v for k, v in context.state_dict().items()},
                "target_encoder": {f"module.{k}": v for k, v in target.state_dict().items()}, "epoch": 1}, path)
    src = inspect_source(str(path))
    assert src.kind == "official" and src.recipe is None
    enc, desc = source_encoder(src, None, SECTION, seed=0)
    assert desc["role"] == "target" and encoder_hash(enc) == encoder_hash(target)
    enc, desc = source_encoder(src, "context", SECTION, seed=0)
    assert desc["role"] == "context" and encoder_hash(enc) == encoder_hash(context)
    # at another resolution (a multiple of the patch): the sin-cos positions are recomputed for the data's grid
    enc, _ = source_encoder(src, None, {**SECTION, "image_size": 48}, seed=0)
    assert enc.grid_size == (3, 3) and enc(torch.zeros(2, 3, 48, 48)).shape == (2, 9, 192)


def test_timm_floors_are_seeded_and_fit_the_data():
    vit, desc = source_encoder(inspect_source("timm:vit_tiny_patch16_224"), None, {**SECTION, "channels": 1}, 0)
    assert type(vit).__name__ == "TimmViTEncoder" and vit.in_chans == 1 and vit.grid_size == (2, 2)
    assert desc["model_name"] == "vit_tiny_patch16_224" and desc["init_seed"] == 0
    again, _ = source_encoder(inspect_source("timm:vit_tiny_patch16_224"), None, {**SECTION, "channels": 1}, 0)
    other, _ = source_encoder(inspect_source("timm:vit_tiny_patch16_224"), None, {**SECTION, "channels": 1}, 1)
    assert encoder_hash(vit) == encoder_hash(again) != encoder_hash(other)
    cnn, _ = source_encoder(inspect_source("timm:resnet10t"), None, SECTION, 0)
    assert type(cnn).__name__ == "TimmCNNEncoder"
    with pytest.raises(JepaflowError, match="single encoder"):
        source_encoder(inspect_source("timm:resnet10t"), "target", SECTION, 0)


def test_missing_sources_name_the_fix(tmp_path):
    with pytest.raises(JepaflowError, match="no probe source"):
        inspect_source(str(tmp_path / "nothing"))
    with pytest.raises(JepaflowError, match="without checkpoints/last.pt"):
        inspect_source(str(tmp_path))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(JepaflowError, match="cannot read"):
        inspect_source(str(tmp_path / "junk.pt"))


def test_an_encoder_that_cannot_take_the_datas_resolution_is_one_message():
    from jepaflow.probes.sources import _check_image_size

    class FixedSize(PixelFeatures):  # a stand-in for any encoder built for one resolution only
        def forward(self, images, keep=None, keep_valid=None):
            return images.reshape(images.shape[0], 1, 3 * 32 * 32)

    enc = FixedSize(3, 32)
    enc.patch_size, enc.grid_size = 8, (4, 4)
    _check_image_size(enc, 3, 32, "x.pt")  # fits: no error
    with pytest.raises(JepaflowError, match=r"x.pt cannot encode 40 px images \(it was built for 32 px\)") as err:
        _check_image_size(enc, 3, 40, "x.pt")
    assert "data.image_size" in err.value.fix
