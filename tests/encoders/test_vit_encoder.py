"""ViT encoder: reference naming, effective init, and equality with an explicit ViT forward written here."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from jepaflow.encoders.vit import VIT_SIZES, VisionTransformerEncoder, vit_small, vit_tiny
from jepaflow.layers.pos_embed import sincos_pos_embed_2d
from jepaflow.registry import get_plugin

D, DEPTH, HEADS, P, IMG = 32, 2, 4, 8, 32  # grid 4x4


def small_encoder(**kw) -> VisionTransformerEncoder:
    cfg = dict(size="tiny", embed_dim=D, depth=DEPTH, num_heads=HEADS, patch_size=P, img_size=IMG)
    cfg.update(kw)
    return VisionTransformerEncoder(VisionTransformerEncoder.Config(**cfg))


# ------------------------------------------------------------------------------------------------------------
# Independent reference: explicit softmax attention, pre-norm blocks, LayerNorm eps 1e-6, exact GELU
# ------------------------------------------------------------------------------------------------------------


def ref_layer_norm(x, w, b):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-6) * w + b


def ref_block(x, sd, prefix, heads, key_valid=None):
    B, L, C = x.shape
    hd = C // heads
    h = ref_layer_norm(x, sd[prefix + "norm1.weight"], sd[prefix + "norm1.bias"])
    qkv = h @ sd[prefix + "attn.qkv.weight"].T + sd[prefix + "attn.qkv.bias"]
    q, k, v = qkv.reshape(B, L, 3, heads, hd).permute(2, 0, 3, 1, 4)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(hd)  # (B, heads, L, L)
    if key_valid is not None:
        scores = scores.masked_fill(~key_valid[:, None, None, :], float("-inf"))
    attn = scores.softmax(-1)
    y = (attn @ v).transpose(1, 2).reshape(B, L, C)
    x = x + y @ sd[prefix + "attn.proj.weight"].T + sd[prefix + "attn.proj.bias"]
    h = ref_layer_norm(x, sd[prefix + "norm2.weight"], sd[prefix + "norm2.bias"])
    h = h @ sd[prefix + "mlp.fc1.weight"].T + sd[prefix + "mlp.fc1.bias"]
    h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
    return x + h @ sd[prefix + "mlp.fc2.weight"].T + sd[prefix + "mlp.fc2.bias"]


def ref_encoder(sd, images, p, heads, depth, keep=None, key_valid=None, pos=None, final_norm=True):
    B, C, H, W = images.shape
    Hp, Wp = H // p, W // p
    # patch (r, c) flattened in the conv weight's (C, ph, pw) order; tokens row-major over the grid
    patches = images.reshape(B, C, Hp, p, Wp, p).permute(0, 2, 4, 1, 3, 5).reshape(B, Hp * Wp, C * p * p)
    w = sd["patch_embed.proj.weight"]
    x = patches @ w.reshape(w.shape[0], -1).T + sd["patch_embed.proj.bias"]
    x = x + (sd["pos_embed"] if pos is None else pos)
    if keep is not None:
        x = torch.stack([x[b, keep[b]] for b in range(B)])
    for i in range(depth):
        x = ref_block(x, sd, f"blocks.{i}.", heads, key_valid)
    if final_norm:
        x = ref_layer_norm(x, sd["norm.weight"], sd["norm.bias"])
    return x


def official_keys(depth: int) -> set[str]:
    keys = {"patch_embed.proj.weight", "patch_embed.proj.bias", "pos_embed", "norm.weight", "norm.bias"}
    for i in range(depth):
        for name in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
            keys |= {f"blocks.{i}.{name}.weight", f"blocks.{i}.{name}.bias"}
    return keys


def reference_param_count(dim, depth, mlp_ratio, patch=16, chans=3) -> int:
    """Trainable parameters of the reference architecture without class token, head or position table."""
    hidden = int(dim * mlp_ratio)
    patch_embed = chans * patch * patch * dim + dim
    block = (
        2 * dim  # norm1
        + 3 * dim * dim
        + 3 * dim  # qkv (with bias)
        + dim * dim
        + dim  # proj
        + 2 * dim  # norm2
        + dim * hidden
        + hidden  # fc1
        + hidden * dim
        + dim  # fc2
    )
    return patch_embed + depth * block + 2 * dim


# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("factory,dim", [(vit_tiny, 192), (vit_small, 384)])
def test_factory_shapes(factory, dim):
    torch.manual_seed(0)
    enc = factory(img_size=32, depth=1).eval()
    assert enc.embed_dim == dim and enc.grid_size == (2, 2) and enc.num_patches == 4 and enc.in_chans == 3
    assert enc.num_heads == VIT_SIZES[enc.config.size][2] and enc.depth == 1 and enc.patch_size == 16
    with torch.no_grad():
        out = enc(torch.randn(2, 3, 32, 32))
        kept = enc(torch.randn(2, 3, 32, 32), keep=torch.tensor([[0, 3, 1], [2, 2, 0]]))
    assert out.shape == (2, 4, dim) and kept.shape == (2, 3, dim)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("size", list(VIT_SIZES))
def test_param_counts_match_reference_formula(size):
    with torch.device("meta"):  # no memory, no init cost: the count only needs the shapes
        enc = VisionTransformerEncoder(VisionTransformerEncoder.Config(size=size))
    dim, depth, heads, ratio = VIT_SIZES[size]
    assert (enc.embed_dim, enc.depth, enc.num_heads) == (dim, depth, heads)
    n = sum(p.numel() for p in enc.parameters())
    assert n == reference_param_count(dim, depth, ratio)
    # the position table is a buffer, not a parameter
    assert "pos_embed" not in dict(enc.named_parameters())
    assert enc.pos_embed.shape == (1, 196, dim)
    if size == "base":
        assert n == 85_646_592  # ViT-B/16 without class token, head and (buffer) position table
    if size == "giant":
        assert enc.blocks[0].mlp.fc1.out_features == 6144


def test_state_dict_keys_are_the_official_ones():
    enc = small_encoder(depth=3)
    sd = enc.state_dict()
    assert set(sd) == official_keys(3)
    assert sd["pos_embed"].shape == (1, 16, D)
    assert sd["blocks.0.attn.qkv.weight"].shape == (3 * D, D)
    assert sd["blocks.0.mlp.fc1.weight"].shape == (4 * D, D)
    assert sd["patch_embed.proj.weight"].shape == (D, 3, P, P)
    # a state dict with exactly these keys (an official checkpoint) loads strictly into a fresh model
    other = small_encoder(depth=3)
    other.load_state_dict({k: v.clone() for k, v in sd.items()}, strict=True)
    x = torch.randn(1, 3, IMG, IMG)
    with torch.no_grad():
        torch.testing.assert_close(other(x), enc(x))


def test_pos_embed_buffer_is_the_sincos_table():
    enc = small_encoder()
    torch.testing.assert_close(enc.pos_embed[0], sincos_pos_embed_2d(D, (4, 4)), atol=0, rtol=0)


def test_effective_reference_init():
    torch.manual_seed(0)
    enc = vit_tiny(img_size=32)  # width 192, 12 blocks: enough entries for tight std estimates
    for name, m in enc.named_modules():
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
            # no depth rescale: even the last block's proj / fc2 keep std 0.02 (rescaled: 0.02/sqrt(24))
            assert abs(m.weight.std().item() - 0.02) < 0.002, name
            assert m.weight.abs().max().item() < 0.2, name
            assert torch.count_nonzero(m.bias) == 0, name
        elif isinstance(m, torch.nn.LayerNorm):
            assert torch.all(m.weight == 1) and torch.count_nonzero(m.bias) == 0, name
            assert m.eps == 1e-6, name


def test_forward_equals_reference_without_and_with_keep():
    torch.manual_seed(0)
    enc = small_encoder().double().eval()
    # random LayerNorm affine too, so that the reference's use of every parameter is exercised
    with torch.no_grad():
        for m in enc.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.normal_(1.0, 0.2)
                m.bias.normal_(0.0, 0.2)
    sd = enc.state_dict()
    x = torch.randn(3, 3, IMG, IMG, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(enc(x), ref_encoder(sd, x, P, HEADS, DEPTH), atol=1e-10, rtol=0)
        keep = torch.stack([torch.randperm(16)[:7] for _ in range(3)])
        out = enc(x, keep=keep)
        torch.testing.assert_close(out, ref_encoder(sd, x, P, HEADS, DEPTH, keep=keep), atol=1e-10, rtol=0)
        # keeping tokens is not the same as encoding all of them and gathering afterwards
        full_then_gather = torch.stack([enc(x)[b, keep[b]] for b in range(3)])
        assert not torch.allclose(out, full_then_gather, atol=1e-3)


def test_keep_valid_masks_padding_out():
    torch.manual_seed(0)
    enc = small_encoder().eval()
    x = torch.randn(2, 3, IMG, IMG)
    keep = torch.tensor([[5, 1, 9, 12, 3, 0], [2, 7, 14, 11, 0, 0]])  # row 1: last two entries are padding
    valid = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    with torch.no_grad():
        padded = enc(x, keep=keep, keep_valid=valid)
        row0 = enc(x[:1], keep=keep[:1])
        row1 = enc(x[1:], keep=keep[1:, :4])
        unmasked = enc(x, keep=keep)
        ref = ref_encoder(enc.state_dict(), x, P, HEADS, DEPTH, keep=keep, key_valid=valid)
    torch.testing.assert_close(padded[0], row0[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(padded[1, :4], row1[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(padded, ref, atol=1e-5, rtol=1e-5)
    assert torch.isfinite(padded).all()
    # without the mask the padding leaks into the valid tokens
    assert not torch.allclose(unmasked[1, :4], row1[0], atol=1e-3)


def test_other_image_size_recomputes_sincos_table():
    torch.manual_seed(0)
    enc = small_encoder().double().eval()
    sd = enc.state_dict()
    for H, W in [(48, 48), (48, 32), (16, 40)]:
        x = torch.randn(2, 3, H, W, dtype=torch.float64)
        pos = sincos_pos_embed_2d(D, (H // P, W // P), dtype=torch.float64)
        with torch.no_grad():
            out = enc(x)
            again = enc(x)  # served from the cache
        assert out.shape == (2, (H // P) * (W // P), D)
        torch.testing.assert_close(out, ref_encoder(sd, x, P, HEADS, DEPTH, pos=pos), atol=1e-10, rtol=0)
        assert torch.equal(out, again)
    with pytest.raises(ValueError):
        enc(torch.randn(1, 3, 30, 32, dtype=torch.float64))


def test_configured_grid_uses_the_buffer():
    enc = small_encoder().eval()
    x = torch.randn(1, 3, IMG, IMG)
    with torch.no_grad():
        before = enc(x)
        enc.pos_embed.add_(1.0)  # e.g. a checkpoint with another table
        after = enc(x)
    assert not torch.allclose(before, after)


def test_forward_layers():
    torch.manual_seed(0)
    enc = small_encoder(depth=3).double().eval()
    sd = enc.state_dict()
    x = torch.randn(2, 3, IMG, IMG, dtype=torch.float64)
    with torch.no_grad():
        outs = enc.forward_layers(x, 2)
        assert len(outs) == 2 and all(o.shape == (2, 16, D) for o in outs)
        torch.testing.assert_close(
            outs[0], ref_encoder(sd, x, P, HEADS, 2, final_norm=False), atol=1e-10, rtol=0
        )
        torch.testing.assert_close(enc.norm(outs[1]), enc(x), atol=1e-12, rtol=0)
        assert len(enc.forward_layers(x, 3)) == 3
    for bad in (0, 4):
        with pytest.raises(ValueError):
            enc.forward_layers(x, bad)


def test_gradients_reach_every_parameter():
    enc = small_encoder()
    out = enc(torch.randn(2, 3, IMG, IMG), keep=torch.tensor([[0, 5], [3, 3]]))
    out.square().mean().backward()
    for name, p in enc.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_drop_path_schedule():
    enc = small_encoder(depth=3, drop_path_rate=0.2)
    assert isinstance(enc.blocks[0].drop_path1, torch.nn.Identity)
    assert [enc.blocks[i].drop_path1.drop_prob for i in (1, 2)] == pytest.approx([0.1, 0.2])


@pytest.mark.parametrize(
    "bad",
    [
        dict(img_size=30, patch_size=16),  # not divisible
        dict(embed_dim=30, num_heads=4),  # heads do not divide the width
        dict(embed_dim=18, num_heads=3),  # width not a multiple of 4 (sin-cos)
        dict(size="enormous"),
        dict(dropout=0.1),  # unknown field
    ],
)
def test_config_validation(bad):
    with pytest.raises(ValidationError):
        VisionTransformerEncoder.Config(**bad)


def test_overrides_and_registry():
    cfg = VisionTransformerEncoder.Config(size="large", embed_dim=64, depth=2)
    assert cfg.dims() == (64, 2, 16, 4.0)
    assert get_plugin("encoder", "vit") is VisionTransformerEncoder


def test_lecun_patch_init_gives_patch_tokens_unit_scale():
    """The reference init draws the patch projection from trunc_normal(0.02): with 4x4 grey patches the tokens'
    content is ~0.08 per feature against ~0.5 for the sin-cos positions. ``lecun_normal`` (std 1/sqrt(fan_in))
    brings it to ~1; nothing else of the init changes."""
    torch.manual_seed(0)
    ref = small_encoder(patch_size=4, img_size=28, in_chans=1, embed_dim=128, num_heads=4)
    torch.manual_seed(0)
    lec = small_encoder(patch_size=4, img_size=28, in_chans=1, embed_dim=128, num_heads=4,
                        patch_embed_init="lecun_normal")
    x = torch.randn(256, 1, 28, 28)
    with torch.no_grad():
        ref_std, lec_std = ref.patch_embed(x).std().item(), lec.patch_embed(x).std().item()
    assert 0.05 < ref_std < 0.12 and 0.85 < lec_std < 1.15
    assert abs(lec.patch_embed.proj.weight.std().item() - 1 / 4) < 0.02  # 1/sqrt(16 inputs)
    for (name, a), (_, b) in zip(ref.state_dict().items(), lec.state_dict().items()):
        if name != "patch_embed.proj.weight":
            assert torch.equal(a, b), name
