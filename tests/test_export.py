"""jepaflow.export: safetensors + encoder.json round trip, and timm VisionTransformers with equal patch tokens."""

from __future__ import annotations

import hashlib
import json

import pytest
import timm
import torch
from conftest import TINY_RECIPE
from safetensors.torch import load_file
from test_hub import official_checkpoint, random_vit_state

from jepaflow.config import load_recipe
from jepaflow.engine.build import build_objective
from jepaflow.errors import JepaflowError
from jepaflow.export import IMAGENET_MEAN, export_encoder, timm_vit_name
from jepaflow.registry import default_registry

TIMM_VIT = {"name": "timm_vit", "model_name": "vit_tiny_patch16_224", "img_size": 32,
            "model_kwargs": {"patch_size": 8, "embed_dim": 48, "num_heads": 3, "depth": 2}}
SIMCLR_CNN = {"predictor": None, "masker": None, "target_updater": None, "objective": {"name": "simclr"},
              "views": {"name": "two_view"}, "projector": {"name": "mlp", "hidden_dims": [32], "out_dim": 16},
              "encoder": {"name": "timm_cnn", "model_name": "resnet18", "img_size": 32}}


def write_run(root, sections: dict | None = None):
    """A jepaflow run folder whose checkpoint holds a tiny objective with every weight perturbed (the context and
    target encoders differ, LayerNorms are not 1/0), as after training; ``sections`` replace (None: remove) those
    of the tiny I-JEPA recipe. Returns (run folder, objective)."""
    body = {**TINY_RECIPE, **(sections or {})}
    recipe = load_recipe({k: v for k, v in body.items() if v is not None})
    torch.manual_seed(0)
    objective = build_objective(recipe).eval()
    with torch.no_grad():
        for p in objective.parameters():
            p.add_(0.05 * torch.randn_like(p))
    run = root / "run"
    (run / "checkpoints").mkdir(parents=True)
    ckpt = {"format": "jepaflow-checkpoint", "version": 1, "recipe": recipe.to_dict(),
            "objective": objective.state_dict(), "step": 10}
    torch.save(ckpt, run / "checkpoints" / "last.pt")
    return run, objective


def timm_model(out, info: dict) -> torch.nn.Module:
    t = info["timm"]
    overlay = {**t["pretrained_cfg_overlay"], "file": str(out / t["file"])}
    return timm.create_model(t["model_name"], pretrained=True, pretrained_cfg_overlay=overlay, **t["kwargs"]).eval()


@pytest.fixture(scope="module")
def images():
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_vit_export_round_trips_and_loads_into_timm_with_equal_patch_tokens(tmp_path, images):
    run, objective = write_run(tmp_path)
    out = tmp_path / "export"
    info = export_encoder(run, out)
    assert json.loads((out / "encoder.json").read_text()) == info
    target = objective.target_encoder  # the representation encoder of I-JEPA
    assert (info["embed_dim"], info["patch_size"], info["grid_size"], info["in_chans"], info["img_size"]) == (
        48, 8, [4, 4], 3, 32)
    enc = info["encoder"]
    assert (enc["name"], enc["class"], enc["package"]) == ("vit", "jepaflow.encoders.vit:VisionTransformerEncoder",
                                                          "jepaflow")
    ckpt = run / "checkpoints" / "last.pt"
    assert info["source"]["sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    data = load_recipe(TINY_RECIPE).to_dict()["data"]
    assert info["normalization"] == {"mean": list(data["mean"]), "std": list(data["std"])}

    # the plugin rebuilt from encoder.json + the safetensors file is the target encoder, exactly
    cls = default_registry().get("encoder", enc["name"])
    rebuilt = cls(cls.Config(**enc["config"]))
    rebuilt.load_state_dict(load_file(str(out / info["weights"])), strict=True)
    rebuilt.eval()
    with torch.no_grad():
        want = target(images)
        torch.testing.assert_close(rebuilt(images), want, atol=0, rtol=0)

        # timm: the same file, equal patch tokens and equal pooled features
        assert (info["timm"]["file"], info["timm"]["model_name"]) == ("encoder.safetensors", "vit_tiny_patch16_224")
        model = timm_model(out, info)
        assert model.cls_token is None and model.num_prefix_tokens == 0 and model.num_classes == 0
        torch.testing.assert_close(model.forward_features(images), want, atol=1e-5, rtol=0)
        torch.testing.assert_close(model(images), target.pool(want), atol=1e-5, rtol=0)
    # timm's data config follows the run: its input size and normalization, not the named model's
    cfg = timm.data.resolve_data_config({}, model=model)
    assert tuple(cfg["input_size"]) == (3, 32, 32) and tuple(cfg["mean"]) == tuple(info["normalization"]["mean"])


def test_which_selects_the_role(tmp_path, images):
    run, objective = write_run(tmp_path)
    info = export_encoder(run, tmp_path / "ctx", which="context")
    assert info["source"]["which"] == "context"
    state = load_file(str(tmp_path / "ctx" / "encoder.safetensors"))
    for name, value in objective.encoder.state_dict().items():
        assert torch.equal(state[name], value), name
    assert not torch.equal(state["norm.weight"], objective.target_encoder.norm.weight)
    with pytest.raises(JepaflowError, match="no encoder 'student'"):
        export_encoder(run, tmp_path / "student", which="student")
    assert not (tmp_path / "student").exists()


def test_official_ijepa_checkpoint_exports_to_timm(tmp_path, images):
    context, target = random_vit_state(1), random_vit_state(2)
    path = tmp_path / "IN1K-vit.t.8-2e.pth.tar"
    torch.save(official_checkpoint(context, target), path)
    info = export_encoder(path, tmp_path / "out")
    assert info["normalization"]["mean"] == list(IMAGENET_MEAN)
    assert info["encoder"]["config"]["size"] == "tiny" and info["embed_dim"] == 192
    from jepaflow.hub import load_encoder

    enc = load_encoder(path)
    model = timm_model(tmp_path / "out", info)
    assert tuple(timm.data.resolve_data_config({}, model=model)["mean"]) == IMAGENET_MEAN
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(images), enc(images), atol=1e-5, rtol=0)


def test_timm_vit_encoder_exports_without_the_model_prefix(tmp_path, images):
    run, objective = write_run(tmp_path, {"encoder": TIMM_VIT})
    out = tmp_path / "export"
    info = export_encoder(run, out)
    assert info["encoder"]["name"] == "timm_vit" and info["timm"]["file"] == "timm.safetensors"
    assert all(not k.startswith("model.") for k in load_file(str(out / "timm.safetensors")))
    model = timm_model(out, info)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(images), objective.target_encoder(images), atol=1e-5,
                                   rtol=0)


def test_encoders_without_a_timm_vit_equivalent(tmp_path):
    run, objective = write_run(tmp_path, SIMCLR_CNN)
    info = export_encoder(run, tmp_path / "auto")  # weights and json only
    assert info["timm"] is None and info["encoder"]["name"] == "timm_cnn"
    assert sorted(p.name for p in (tmp_path / "auto").iterdir()) == ["encoder.json", "encoder.safetensors"]
    with pytest.raises(JepaflowError, match="'timm_cnn' encoder .* has no timm VisionTransformer equivalent"):
        export_encoder(run, tmp_path / "forced", timm_weights=True)
    assert not (tmp_path / "forced").exists()


def test_existing_files_are_never_overwritten(tmp_path):
    run, _ = write_run(tmp_path)
    out = tmp_path / "export"
    out.mkdir()
    (out / "encoder.json").write_text("mine")
    with pytest.raises(JepaflowError, match="already holds encoder.json"):
        export_encoder(run, out)
    assert (out / "encoder.json").read_text() == "mine" and not (out / "encoder.safetensors").exists()


@pytest.mark.parametrize("size", ["tiny", "small", "base", "large", "huge", "giant"])
def test_every_vit_size_names_a_timm_model_with_a_pretrained_config(size):
    # pretrained=True (how the file is loaded) needs a pretrained_cfg; every dimension is passed explicitly
    name = timm_vit_name(size, 16)
    assert timm.is_model(name) and timm.models.get_pretrained_cfg(name) is not None, name
