"""ViT predictor: reference naming and init, equality with a per-target-block reference written here."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from pydantic import ValidationError

from jepaflow.encoders.vit import VisionTransformerEncoder
from jepaflow.layers.pos_embed import sincos_pos_embed_2d
from jepaflow.predictors.vit_predictor import VisionTransformerPredictor
from jepaflow.registry import get_plugin

ENC_D, GRID, D, DEPTH, HEADS = 40, (4, 5), 32, 2, 4
N = GRID[0] * GRID[1]


def fake_encoder(embed_dim=ENC_D, grid=GRID, **extra):
    return SimpleNamespace(embed_dim=embed_dim, grid_size=grid, **extra)


def make_predictor(dtype=torch.float32, **kw) -> VisionTransformerPredictor:
    cfg = dict(embed_dim=D, depth=DEPTH, num_heads=HEADS)
    cfg.update(kw)
    pred = VisionTransformerPredictor(VisionTransformerPredictor.Config(**cfg), encoder=fake_encoder())
    pred = pred.to(dtype).eval()
    with (
        torch.no_grad()
    ):  # non-trivial LayerNorm affine and biases, so the reference must use every parameter
        for name, p in pred.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.1)
            elif "norm" in name:
                p.normal_(1.0, 0.2)
    return pred


# ------------------------------------------------------------------------------------------------------------
# Independent reference: one sequence per target block (a Python loop over M), as the official predictor does
# ------------------------------------------------------------------------------------------------------------


def ref_layer_norm(x, w, b):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-6) * w + b


def ref_block(x, sd, prefix, heads, key_valid=None, allowed=None):
    """``key_valid`` ``(B, L)`` hides keys from every row; ``allowed`` ``(L, L)`` (row, key) hides per row."""
    B, L, C = x.shape
    hd = C // heads
    h = ref_layer_norm(x, sd[prefix + "norm1.weight"], sd[prefix + "norm1.bias"])
    qkv = h @ sd[prefix + "attn.qkv.weight"].T + sd[prefix + "attn.qkv.bias"]
    q, k, v = qkv.reshape(B, L, 3, heads, hd).permute(2, 0, 3, 1, 4)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
    if key_valid is not None:
        scores = scores.masked_fill(~key_valid[:, None, None, :], float("-inf"))
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, L, C)
    x = x + y @ sd[prefix + "attn.proj.weight"].T + sd[prefix + "attn.proj.bias"]
    h = ref_layer_norm(x, sd[prefix + "norm2.weight"], sd[prefix + "norm2.bias"])
    h = h @ sd[prefix + "mlp.fc1.weight"].T + sd[prefix + "mlp.fc1.bias"]
    h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
    return x + h @ sd[prefix + "mlp.fc2.weight"].T + sd[prefix + "mlp.fc2.bias"]


def ref_predictor(sd, ctx, ctx_idx, tgt_idx, heads, depth, ctx_valid=None, tgt_valid=None,
                  context_sees_queries=True):
    """One sequence per block; ``context_sees_queries=False`` hides the block's queries from the context rows
    (what the one-sequence layout computes)."""
    pos = sd["predictor_pos_embed"][0]  # (N, d)
    B, M, Kt = tgt_idx.shape
    Kc = ctx.shape[1]
    x = ctx @ sd["predictor_embed.weight"].T + sd["predictor_embed.bias"] + pos[ctx_idx]
    preds = []
    for m in range(M):
        queries = sd["mask_token"] + pos[tgt_idx[:, m]]
        seq = torch.cat([x, queries], dim=1)
        valid = None
        if ctx_valid is not None or tgt_valid is not None:
            cv = ctx_valid if ctx_valid is not None else torch.ones(B, Kc, dtype=torch.bool)
            tv = tgt_valid[:, m] if tgt_valid is not None else torch.ones(B, Kt, dtype=torch.bool)
            valid = torch.cat([cv, tv], dim=1)
        allowed = None
        if not context_sees_queries:
            allowed = torch.ones(Kc + Kt, Kc + Kt, dtype=torch.bool)
            allowed[:Kc, Kc:] = False
        for i in range(depth):
            seq = ref_block(seq, sd, f"predictor_blocks.{i}.", heads, valid, allowed)
        seq = ref_layer_norm(seq, sd["predictor_norm.weight"], sd["predictor_norm.bias"])
        preds.append(seq[:, Kc:] @ sd["predictor_proj.weight"].T + sd["predictor_proj.bias"])
    return torch.stack(preds, dim=1)


def official_keys(depth: int) -> set[str]:
    keys = {
        "predictor_embed.weight", "predictor_embed.bias", "mask_token", "predictor_pos_embed",
        "predictor_norm.weight", "predictor_norm.bias", "predictor_proj.weight", "predictor_proj.bias",
    }  # fmt: skip
    for i in range(depth):
        for name in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
            keys |= {f"predictor_blocks.{i}.{name}.weight", f"predictor_blocks.{i}.{name}.bias"}
    return keys


def random_indices(B, M, Kc, Kt, gen):
    ctx_idx = torch.stack([torch.randperm(N, generator=gen)[:Kc] for _ in range(B)])
    tgt_idx = torch.stack(
        [torch.stack([torch.randperm(N, generator=gen)[:Kt] for _ in range(M)]) for _ in range(B)]
    )
    return ctx_idx, tgt_idx


# ------------------------------------------------------------------------------------------------------------


def test_keys_shapes_and_buffers():
    pred = VisionTransformerPredictor(
        VisionTransformerPredictor.Config(embed_dim=D, depth=3, num_heads=HEADS), encoder=fake_encoder()
    )
    sd = pred.state_dict()
    assert set(sd) == official_keys(3)
    assert sd["mask_token"].shape == (1, 1, D)
    assert sd["predictor_pos_embed"].shape == (1, N, D)
    torch.testing.assert_close(sd["predictor_pos_embed"][0], sincos_pos_embed_2d(D, GRID), atol=0, rtol=0)
    assert sd["predictor_embed.weight"].shape == (D, ENC_D) and sd["predictor_proj.weight"].shape == (
        ENC_D,
        D,
    )
    assert "predictor_pos_embed" not in dict(pred.named_parameters())
    assert pred.out_dim == ENC_D


@pytest.mark.parametrize("last_block_targets_only", [True, False])
def test_forward_equals_per_block_reference(last_block_targets_only):
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    pred = make_predictor(torch.float64, last_block_targets_only=last_block_targets_only)
    B, M, Kc, Kt = 3, 4, 7, 5
    ctx_idx, tgt_idx = random_indices(B, M, Kc, Kt, gen)
    ctx = torch.randn(B, Kc, ENC_D, dtype=torch.float64)
    with torch.no_grad():
        out = pred(ctx, ctx_idx, tgt_idx)
        ref = ref_predictor(pred.state_dict(), ctx, ctx_idx, tgt_idx, HEADS, DEPTH)
    assert out.shape == (B, M, Kt, ENC_D)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=0)
    # blocks are predicted independently: block m's output does not depend on the other blocks' queries
    with torch.no_grad():
        alone = pred(ctx, ctx_idx, tgt_idx[:, 2:3])
    torch.testing.assert_close(out[:, 2:3], alone, atol=1e-10, rtol=0)


def test_last_block_targets_only_gives_the_same_predictions_and_gradients():
    torch.manual_seed(0)
    trimmed = make_predictor(torch.float64)
    full = make_predictor(torch.float64, last_block_targets_only=False)
    full.load_state_dict(trimmed.state_dict())
    ctx_idx, tgt_idx = random_indices(3, 4, 6, 5, torch.Generator().manual_seed(5))
    ctx = torch.randn(3, 6, ENC_D, dtype=torch.float64)
    valid = torch.ones(3, 6, dtype=torch.bool)
    valid[2, 4:] = False
    outs = [m(ctx, ctx_idx, tgt_idx, context_valid=valid) for m in (trimmed, full)]
    torch.testing.assert_close(outs[0], outs[1], atol=1e-12, rtol=0)
    for o in outs:
        o.square().sum().backward()
    for (name, a), b in zip(trimmed.named_parameters(), full.parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-10, rtol=1e-10, msg=name)


def test_one_sequence_layout_equals_per_block_with_the_context_blind_to_queries():
    gen = torch.Generator().manual_seed(6)
    torch.manual_seed(0)
    pred = make_predictor(torch.float64, target_layout="one_sequence")
    B, M, Kc, Kt = 3, 4, 7, 5
    ctx_idx, tgt_idx = random_indices(B, M, Kc, Kt, gen)
    ctx = torch.randn(B, Kc, ENC_D, dtype=torch.float64)
    tgt_valid = torch.ones(B, M, Kt, dtype=torch.bool)
    tgt_valid[1, 2, 3:] = False  # padded queries in one block
    ctx_valid = torch.ones(B, Kc, dtype=torch.bool)
    ctx_valid[0, -2:] = False
    sd = pred.state_dict()
    with torch.no_grad():
        out = pred(ctx, ctx_idx, tgt_idx, ctx_valid, tgt_valid)
        ref = ref_predictor(sd, ctx, ctx_idx, tgt_idx, HEADS, DEPTH, ctx_valid, tgt_valid, context_sees_queries=False)
        official = ref_predictor(sd, ctx, ctx_idx, tgt_idx, HEADS, DEPTH, ctx_valid, tgt_valid)
    assert out.shape == (B, M, Kt, ENC_D)
    keep = tgt_valid[..., None].expand_as(out)  # padded queries' outputs are meaningless
    torch.testing.assert_close(out[keep], ref[keep], atol=1e-10, rtol=0)
    # a deviation from the official computation (documented), not a re-layout of it
    assert (out[keep] - official[keep]).abs().max() > 1e-6  # far above float64 rounding (1e-10 above)
    # blocks stay independent: a block predicted alone gives the same output
    with torch.no_grad():
        alone = pred(ctx, ctx_idx, tgt_idx[:, 3:4], ctx_valid)
    torch.testing.assert_close(out[:, 3:4], alone, atol=1e-10, rtol=0)


def test_attention_mask_is_none_without_padding():
    pred = make_predictor()
    seen = []
    pred.predictor_blocks[0].register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append(kwargs.get("attn_mask")), with_kwargs=True
    )
    ctx_idx, tgt_idx = random_indices(2, 2, 4, 3, torch.Generator().manual_seed(1))
    with torch.no_grad():
        pred(torch.randn(2, 4, ENC_D), ctx_idx, tgt_idx)
        pred(torch.randn(2, 4, ENC_D), ctx_idx, tgt_idx, context_valid=torch.ones(2, 4, dtype=torch.bool))
    assert seen[0] is None
    assert seen[1] is not None and seen[1].shape == (4, 1, 1, 7) and seen[1].dtype == torch.bool


def test_context_padding_invariance():
    torch.manual_seed(0)
    pred = make_predictor()
    gen = torch.Generator().manual_seed(2)
    B, M, Kc, Kt = 2, 3, 6, 4
    ctx_idx, tgt_idx = random_indices(B, M, Kc, Kt, gen)
    ctx = torch.randn(B, Kc, ENC_D)
    ctx_idx[1, 4:] = 0  # row 1 holds 4 real context tokens and 2 padding entries
    ctx[1, 4:] = 100.0  # whatever the padded tokens contain must not matter
    valid = torch.ones(B, Kc, dtype=torch.bool)
    valid[1, 4:] = False
    with torch.no_grad():
        padded = pred(ctx, ctx_idx, tgt_idx, context_valid=valid)
        row0 = pred(ctx[:1], ctx_idx[:1], tgt_idx[:1])
        row1 = pred(ctx[1:, :4], ctx_idx[1:, :4], tgt_idx[1:])
        leaky = pred(ctx, ctx_idx, tgt_idx)
        ref = ref_predictor(pred.state_dict(), ctx, ctx_idx, tgt_idx, HEADS, DEPTH, ctx_valid=valid)
    torch.testing.assert_close(padded[:1], row0, atol=1e-5, rtol=0)
    torch.testing.assert_close(padded[1:], row1, atol=1e-5, rtol=0)
    torch.testing.assert_close(padded, ref, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(leaky[1:], row1, atol=1e-3)


def test_target_padding_invariance():
    torch.manual_seed(0)
    pred = make_predictor()
    gen = torch.Generator().manual_seed(3)
    B, M, Kc, Kt = 2, 3, 5, 6
    ctx_idx, tgt_idx = random_indices(B, M, Kc, Kt, gen)
    ctx = torch.randn(B, Kc, ENC_D)
    tgt_idx[0, 1, 3:] = 0  # block (0, 1) has 3 real targets and 3 padding entries
    tgt_valid = torch.ones(B, M, Kt, dtype=torch.bool)
    tgt_valid[0, 1, 3:] = False
    ctx_valid = torch.ones(B, Kc, dtype=torch.bool)
    ctx_valid[1, -1] = False  # and one padded context token in row 1, at the same time
    with torch.no_grad():
        padded = pred(ctx, ctx_idx, tgt_idx, context_valid=ctx_valid, target_valid=tgt_valid)
        block01 = pred(ctx[:1], ctx_idx[:1], tgt_idx[:1, 1:2, :3])
        block00 = pred(ctx[:1], ctx_idx[:1], tgt_idx[:1, 0:1])
        row1 = pred(ctx[1:, :-1], ctx_idx[1:, :-1], tgt_idx[1:])
        leaky = pred(ctx, ctx_idx, tgt_idx, context_valid=ctx_valid)
        ref = ref_predictor(pred.state_dict(), ctx, ctx_idx, tgt_idx, HEADS, DEPTH, ctx_valid, tgt_valid)
    torch.testing.assert_close(padded[0, 1, :3], block01[0, 0], atol=1e-5, rtol=0)
    torch.testing.assert_close(padded[0, 0], block00[0, 0], atol=1e-5, rtol=0)
    torch.testing.assert_close(padded[1], row1[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(padded, ref, atol=1e-5, rtol=1e-5)
    assert torch.isfinite(padded).all()
    assert not torch.allclose(leaky[0, 1, :3], block01[0, 0], atol=1e-3)


def test_gradients_reach_mask_token_and_every_parameter():
    pred = make_predictor()
    ctx_idx, tgt_idx = random_indices(2, 2, 4, 3, torch.Generator().manual_seed(4))
    ctx = torch.randn(2, 4, ENC_D, requires_grad=True)
    pred(ctx, ctx_idx, tgt_idx).square().mean().backward()
    assert pred.mask_token.grad is not None and pred.mask_token.grad.abs().sum() > 0
    assert ctx.grad is not None and ctx.grad.abs().sum() > 0
    for name, p in pred.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_effective_reference_init():
    torch.manual_seed(0)
    pred = VisionTransformerPredictor(
        VisionTransformerPredictor.Config(), encoder=fake_encoder(192, (14, 14), num_heads=3)
    )
    assert (pred.embed_dim, pred.depth, pred.num_heads) == (384, 6, 3)
    for name, m in pred.named_modules():
        if isinstance(m, torch.nn.Linear):
            # no depth rescale on the last blocks' proj / fc2 (helper.init_model re-initializes every Linear)
            assert abs(m.weight.std().item() - 0.02) < 0.002, name
            assert torch.count_nonzero(m.bias) == 0, name
        elif isinstance(m, torch.nn.LayerNorm):
            assert torch.all(m.weight == 1) and torch.count_nonzero(m.bias) == 0 and m.eps == 1e-6, name
    assert abs(pred.mask_token.std().item() - 0.02) < 0.005


def test_num_heads_resolution():
    enc8 = fake_encoder(num_heads=8)
    assert (
        VisionTransformerPredictor(VisionTransformerPredictor.Config(embed_dim=32), encoder=enc8).num_heads
        == 8
    )
    # an encoder without num_heads: the reference default, 12
    assert (
        VisionTransformerPredictor(
            VisionTransformerPredictor.Config(embed_dim=48), encoder=fake_encoder()
        ).num_heads
        == 12
    )
    with pytest.raises(ValueError, match="num_heads"):
        VisionTransformerPredictor(VisionTransformerPredictor.Config(embed_dim=32), encoder=fake_encoder())
    with pytest.raises(ValueError, match="num_heads"):
        VisionTransformerPredictor(
            VisionTransformerPredictor.Config(embed_dim=32), encoder=fake_encoder(num_heads=3)
        )
    with pytest.raises(ValidationError):
        VisionTransformerPredictor.Config(embed_dim=32, num_heads=5)
    with pytest.raises(ValidationError):
        VisionTransformerPredictor.Config(embed_dim=30, num_heads=5)  # sin-cos needs a multiple of 4


def test_with_real_encoder():
    torch.manual_seed(0)
    enc = VisionTransformerEncoder(
        VisionTransformerEncoder.Config(
            size="tiny", embed_dim=24, depth=1, num_heads=2, patch_size=8, img_size=32
        )
    ).eval()
    pred = VisionTransformerPredictor(
        VisionTransformerPredictor.Config(embed_dim=16, depth=1), encoder=enc
    ).eval()
    assert pred.num_heads == 2 and pred.out_dim == 24 and pred.grid_size == (4, 4)
    ctx_idx = torch.tensor([[0, 1, 4, 5, 10], [2, 3, 6, 7, 15]])
    tgt_idx = torch.tensor([[[8, 9], [14, 15]], [[0, 1], [12, 13]]])
    with torch.no_grad():
        tokens = enc(torch.randn(2, 3, 32, 32), keep=ctx_idx)
        out = pred(tokens, ctx_idx, tgt_idx)
    assert out.shape == (2, 2, 2, 24) and torch.isfinite(out).all()
    assert get_plugin("predictor", "vit_predictor") is VisionTransformerPredictor
