"""load_encoder: official I-JEPA checkpoints (checked against a reference forward written here) and jepaflow
checkpoints (rebuilt from their recipe)."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from jepaflow.encoders.vit import VisionTransformerEncoder
from jepaflow.errors import JepaflowError
from jepaflow.hub import infer_vit_config, load_encoder, strip_wrapper_prefixes

# ----------------------------------------------------------------------------------------------------------------
# An independent reference: the I-JEPA ViT written out from the paper / reference code's definition
# ----------------------------------------------------------------------------------------------------------------


def reference_sincos(dim: int, rows: int, cols: int) -> np.ndarray:
    """(rows*cols, dim) table, token n = r*cols + c: first half encodes the column c, second half the row r;
    each half is [sin(pos * w_i), cos(pos * w_i)] with w_i = 10000 ** (-i / (dim/4)), i < dim/4."""
    quarter = dim // 4
    omega = 1.0 / 10000 ** (np.arange(quarter, dtype=np.float64) / quarter)
    table = np.zeros((rows * cols, dim))
    for r in range(rows):
        for c in range(cols):
            n = r * cols + c
            table[n, :quarter] = np.sin(c * omega)
            table[n, quarter : 2 * quarter] = np.cos(c * omega)
            table[n, 2 * quarter : 3 * quarter] = np.sin(r * omega)
            table[n, 3 * quarter :] = np.cos(r * omega)
    return table


def reference_forward(sd: dict[str, torch.Tensor], images: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Pre-norm ViT in float64 with an explicit softmax: conv patchify, + sin-cos, blocks, final LN (eps 1e-6)."""
    sd = {k: v.double() for k, v in sd.items()}
    x = images.double()
    w = sd["patch_embed.proj.weight"]
    dim, p = w.shape[0], w.shape[-1]
    x = F.conv2d(x, w, sd["patch_embed.proj.bias"], stride=p)  # (B, D, H/p, W/p)
    B, _, gh, gw = x.shape
    x = x.flatten(2).transpose(1, 2) + torch.from_numpy(reference_sincos(dim, gh, gw))
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    hd = dim // num_heads

    def ln(t, name):
        return F.layer_norm(t, (dim,), sd[f"{name}.weight"], sd[f"{name}.bias"], eps=1e-6)

    def linear(t, name):
        return t @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]

    for i in range(depth):
        h = ln(x, f"blocks.{i}.norm1")
        qkv = linear(h, f"blocks.{i}.attn.qkv").reshape(B, -1, 3, num_heads, hd).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = torch.softmax((q @ k.transpose(-2, -1)) / math.sqrt(hd), dim=-1)
        x = x + linear((attn @ v).transpose(1, 2).reshape(B, -1, dim), f"blocks.{i}.attn.proj")
        h = ln(x, f"blocks.{i}.norm2")
        x = x + linear(F.gelu(linear(h, f"blocks.{i}.mlp.fc1")), f"blocks.{i}.mlp.fc2")
    return ln(x, "norm").float()


# ----------------------------------------------------------------------------------------------------------------
# Fixtures: random encoders and official-format checkpoint files
# ----------------------------------------------------------------------------------------------------------------


def random_vit_state(seed: int, **overrides) -> dict[str, torch.Tensor]:
    """State dict of a small VisionTransformerEncoder with every parameter random (LayerNorms included), so
    that a wrong or swapped tensor changes the output; the position table stays the sin-cos one."""
    cfg = {"size": "tiny", "depth": 2, "patch_size": 8, "img_size": 32, **overrides}
    torch.manual_seed(seed)
    enc = VisionTransformerEncoder(VisionTransformerEncoder.Config(**cfg))
    with torch.no_grad():
        for name, p in enc.named_parameters():
            if name.endswith("norm1.weight") or name.endswith("norm2.weight") or name == "norm.weight":
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.1 * torch.randn_like(p))
    return enc.state_dict()


def official_checkpoint(context: dict, target: dict) -> dict:
    """The dict src/train.py:save_checkpoint writes, with DistributedDataParallel's ``module.`` prefixes."""

    def ddp(sd):
        return {f"module.{k}": v for k, v in sd.items()}

    predictor = {"predictor_embed.weight": torch.randn(16, 192), "mask_token": torch.zeros(1, 1, 16)}
    return {
        "encoder": ddp(context),
        "predictor": ddp(predictor),
        "target_encoder": ddp(target),
        "opt": {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(4)}},
                "param_groups": [{"lr": 1e-3, "weight_decay": 0.04, "params": [0]}]},
        "scaler": None,
        "epoch": 3,
        "loss": 0.25,
        "batch_size": 8,
        "world_size": 1,
        "lr": 1e-3,
    }


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """(path, context state, target state) of a tiny official-format checkpoint (ViT-Ti width, 2 blocks)."""
    context, target = random_vit_state(1), random_vit_state(2)
    path = tmp_path_factory.mktemp("official") / "IN1K-vit.t.8-2e.pth.tar"
    torch.save(official_checkpoint(context, target), path)
    return path, context, target


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


# ----------------------------------------------------------------------------------------------------------------
# Official checkpoints
# ----------------------------------------------------------------------------------------------------------------


def test_official_checkpoint_defaults_to_target_and_matches_reference(official, images):
    path, _, target = official
    enc = load_encoder(path)
    assert isinstance(enc, VisionTransformerEncoder)
    assert not enc.training and not any(p.requires_grad for p in enc.parameters())
    cfg = enc.config
    assert (cfg.size, cfg.patch_size, cfg.img_size, cfg.in_chans) == ("tiny", 8, 32, 3)
    assert enc.config.dims() == (192, 2, 3, 4.0)
    assert cfg.embed_dim is None and cfg.num_heads is None and cfg.mlp_ratio is None  # only depth overridden
    with torch.no_grad():
        out = enc(images)
    assert out.shape == (2, 16, 192)
    torch.testing.assert_close(out, reference_forward(target, images, num_heads=3), atol=1e-5, rtol=0)


def test_context_and_target_roles_load_their_own_weights(official, images):
    path, context, target = official
    ctx, tgt = load_encoder(path, which="context"), load_encoder(path, which="target")
    for name, p in ctx.state_dict().items():
        assert torch.equal(p, context[name]), name
    for name, p in tgt.state_dict().items():
        assert torch.equal(p, target[name]), name
    with torch.no_grad():
        out_ctx, out_tgt = ctx(images), tgt(images)
    torch.testing.assert_close(out_ctx, reference_forward(context, images, num_heads=3), atol=1e-5, rtol=0)
    assert (out_ctx - out_tgt).abs().max() > 0.1
    with pytest.raises(JepaflowError, match="target, context"):
        load_encoder(path, which="predictor")


def test_other_img_size_recomputes_sincos_and_matches_reference(official):
    path, _, target = official
    enc = load_encoder(path, img_size=48)
    assert enc.grid_size == (6, 6) and enc.config.img_size == 48
    table = torch.from_numpy(reference_sincos(192, 6, 6)).float()[None]
    torch.testing.assert_close(enc.pos_embed, table, atol=1e-6, rtol=0)
    big = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = enc(big)
    assert out.shape == (2, 36, 192)
    torch.testing.assert_close(out, reference_forward(target, big, num_heads=3), atol=1e-5, rtol=0)
    for name, p in enc.state_dict().items():  # every weight but the grid-dependent table is the file's
        if name != "pos_embed":
            assert torch.equal(p, target[name]), name


def test_unofficial_width_needs_num_heads_and_infers_mlp_ratio(tmp_path, images):
    state = random_vit_state(3, embed_dim=32, num_heads=4, mlp_ratio=3.0, depth=3)
    path = tmp_path / "narrow.pth"
    torch.save(official_checkpoint(state, state), path)
    with pytest.raises(JepaflowError, match="num_heads="):
        load_encoder(path)
    enc = load_encoder(path, num_heads=4)
    assert enc.config.dims() == (32, 3, 4, 3.0)
    with torch.no_grad():
        out = enc(images)
    torch.testing.assert_close(out, reference_forward(state, images, num_heads=4), atol=1e-5, rtol=0)


def test_giant_mlp_ratio_is_recognized_without_override():
    # ViT-g's hidden width 6144 = 1408 * 48/11: the inferred config must keep size "giant" and no override.
    state = {
        "patch_embed.proj.weight": torch.empty(1408, 3, 14, 14),
        "blocks.0.mlp.fc1.weight": torch.empty(6144, 1408),
        "blocks.39.norm1.weight": torch.empty(1408),
        "pos_embed": torch.empty(1, 256, 1408),
    }
    cfg = infer_vit_config(state)
    assert (cfg.size, cfg.patch_size, cfg.img_size) == ("giant", 14, 224)
    assert cfg.embed_dim is None and cfg.depth is None and cfg.num_heads is None and cfg.mlp_ratio is None
    state["blocks.0.mlp.fc1.weight"] = torch.empty(1000, 1408)  # a ratio that is no float-exact fraction
    ratio = infer_vit_config(state).mlp_ratio
    assert int(1408 * ratio) == 1000


def test_bare_state_dict_loads(tmp_path, official, images):
    _, _, target = official
    path = tmp_path / "encoder_only.pth"
    torch.save({f"module.{k}": v for k, v in target.items()}, path)
    with torch.no_grad():
        out = load_encoder(path)(images)
    torch.testing.assert_close(out, reference_forward(target, images, num_heads=3), atol=1e-5, rtol=0)
    with pytest.raises(JepaflowError, match="single encoder"):
        load_encoder(path, which="context")


def test_mismatched_state_dict_names_the_file_and_the_keys(tmp_path, official):
    _, context, target = official
    broken = dict(target)
    del broken["blocks.1.norm2.bias"]
    broken["blocks.0.attn.proj.bias"] = torch.zeros(7)
    broken["head.weight"] = torch.zeros(3)
    path = tmp_path / "broken.pth"
    torch.save(official_checkpoint(context, broken), path)
    with pytest.raises(JepaflowError) as info:
        load_encoder(path)
    msg = str(info.value)
    assert str(path) in msg and "target_encoder" in msg
    assert "missing: blocks.1.norm2.bias" in msg and "unexpected: head.weight" in msg
    assert "blocks.0.attn.proj.bias: (7,) in the file, (192,) expected" in msg
    load_encoder(path, which="context")  # the intact encoder of the same file still loads


def test_unreadable_or_foreign_files_raise_jepaflow_errors(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(os.urandom(4096))
    with pytest.raises(JepaflowError, match="cannot read .*garbage.pth"):
        load_encoder(garbage)
    foreign = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], foreign)
    with pytest.raises(JepaflowError, match="not an encoder checkpoint"):
        load_encoder(foreign)
    with pytest.raises(JepaflowError, match="no checkpoint at"):
        load_encoder(tmp_path / "absent.pth")
    with pytest.raises(JepaflowError, match="checkpoints/last.pt"):
        load_encoder(tmp_path)  # a folder that is not a run


class _Payload:
    """An object whose unpickling has a visible side effect."""

    unpickled: list[int] = []

    def __setstate__(self, state):
        _Payload.unpickled.append(1)


def test_arbitrary_objects_are_refused_without_being_unpickled(tmp_path, official):
    _, context, target = official
    ckpt = official_checkpoint(context, target)
    ckpt["extra"] = _Payload()
    path = tmp_path / "pickled.pth"
    torch.save(ckpt, path)
    with pytest.raises(JepaflowError, match="Unsupported global") as info:
        load_encoder(path)
    assert "weights_only=False" in str(info.value)  # the fix says how to re-save a trusted file
    assert _Payload.unpickled == []


# ----------------------------------------------------------------------------------------------------------------
# jepaflow checkpoints
# ----------------------------------------------------------------------------------------------------------------



def test_jepaflow_checkpoint_round_trip(tmp_path, tiny_recipe, images):
    from jepaflow.config import load_recipe
    from jepaflow.engine.build import build_objective

    recipe = load_recipe(tiny_recipe())
    torch.manual_seed(0)
    objective = build_objective(recipe)
    with torch.no_grad():  # make the two encoders differ, as after training
        for p in objective.encoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    ckpt = {
        "format": "jepaflow-checkpoint",
        "version": 1,
        "recipe": recipe.to_dict(),
        "objective": objective.state_dict(),
        "step": 10,
        "rng": {"torch": torch.get_rng_state()},  # what the engine stores: weights_only-loadable
    }
    torch.save(ckpt, run / "checkpoints" / "last.pt")
    objective.eval()
    with torch.no_grad():
        want_target, want_context = objective.target_encoder(images), objective.encoder(images)

    rng_before = torch.get_rng_state()
    enc = load_encoder(run)  # the representation encoder: I-JEPA's target encoder
    assert torch.equal(torch.get_rng_state(), rng_before)  # loading does not consume the caller's RNG
    assert not enc.training and not any(p.requires_grad for p in enc.parameters())
    with torch.no_grad():
        torch.testing.assert_close(enc(images), want_target, atol=0, rtol=0)
        torch.testing.assert_close(load_encoder(run, which="context")(images), want_context, atol=0, rtol=0)
        assert load_encoder(run, img_size=48)(torch.zeros(1, 3, 48, 48)).shape == (1, 36, 48)
    with pytest.raises(JepaflowError, match="context, target"):
        load_encoder(run / "checkpoints" / "last.pt", which="student")


def test_jepaflow_checkpoint_with_module_extra_state_loads(tmp_path, tiny_recipe, images):
    """Modules may keep non-tensor extra state (SIGReg's call counter, under I-JEPA's sigreg option): the checked
    loader compares shapes of tensors only."""
    from jepaflow.config import load_recipe
    from jepaflow.engine.build import build_objective

    recipe = load_recipe(tiny_recipe({"objective": {"sigreg_weight": 0.1}}))
    objective = build_objective(recipe)
    state = objective.state_dict()
    assert isinstance(state["sigreg._extra_state"], dict)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"format": "jepaflow-checkpoint", "version": 1, "recipe": recipe.to_dict(), "objective": state,
                "step": 1, "rng": {"torch": torch.get_rng_state()}}, run / "checkpoints" / "last.pt")
    objective.eval()
    with torch.no_grad():
        torch.testing.assert_close(load_encoder(run)(images), objective.target_encoder(images), atol=0, rtol=0)


def test_strip_wrapper_prefixes_only_when_every_key_shares_them():
    w = torch.zeros(1)
    # DDP around torch.compile, and the other nesting: both layers go
    assert strip_wrapper_prefixes({"module._orig_mod.a.weight": w, "module._orig_mod.b": w}) == {"a.weight": w, "b": w}
    assert list(strip_wrapper_prefixes({"_orig_mod.module.a": w})) == ["a"]
    # a submodule that happens to be called `module` is part of the model: nothing is renamed
    mixed = {"module.proj.weight": w, "head.weight": w}
    assert strip_wrapper_prefixes(mixed) == mixed
    assert strip_wrapper_prefixes({}) == {}
