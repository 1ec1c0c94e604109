"""MAE decoder: shapes, equality with a per-image reference built position by position, padding and order
invariance, gradients to the mask token."""

import pytest
import torch

from jepaflow.encoders.vit import VisionTransformerEncoder
from jepaflow.layers.pos_embed import sincos_pos_embed_2d
from jepaflow.predictors.mae_decoder import MAEDecoder, fill_sequence


def _encoder(in_chans: int = 3) -> VisionTransformerEncoder:
    return VisionTransformerEncoder(VisionTransformerEncoder.Config(
        size="tiny", patch_size=4, img_size=16, in_chans=in_chans, embed_dim=24, depth=1, num_heads=2))


def _decoder(**cfg) -> MAEDecoder:
    torch.manual_seed(0)
    return MAEDecoder(MAEDecoder.Config(**{"embed_dim": 16, "depth": 2, "num_heads": 2, **cfg}), encoder=_encoder())


def reference_decode(dec: MAEDecoder, tokens, ctx_idx, tgt_idx):
    """One image at a time, the full sequence written out position by position (MAE forward_decoder without
    the class token), then the targets picked one by one."""
    out = []
    N = dec.num_patches
    for b in range(tokens.shape[0]):
        where = {int(j): k for k, j in enumerate(ctx_idx[b])}
        seq = torch.stack([dec.decoder_embed(tokens[b, where[j]]) if j in where else dec.mask_token[0, 0]
                           for j in range(N)])
        x = seq[None] + dec.decoder_pos_embed
        for blk in dec.decoder_blocks:
            x = blk(x)
        x = dec.decoder_pred(dec.decoder_norm(x))[0]  # (N, P)
        out.append(torch.stack([torch.stack([x[int(j)] for j in block]) for block in tgt_idx[b]]))
    return torch.stack(out)


def _random_split(B, N, K, seed=0):
    g = torch.Generator().manual_seed(seed)
    perm = torch.rand(B, N, generator=g).argsort(1)
    return perm[:, :K].sort(1).values, perm[:, K:].sort(1).values.unsqueeze(1)


def test_shapes_out_dim_and_positions():
    dec = _decoder()
    assert dec.out_dim == 4 * 4 * 3 and dec.grid_size == (4, 4)
    assert torch.equal(dec.decoder_pos_embed[0], sincos_pos_embed_2d(16, (4, 4)))
    ctx, tgt = _random_split(3, 16, 4)
    y = dec(torch.randn(3, 4, 24), ctx, tgt)
    assert y.shape == (3, 1, 12, 48)
    # several target blocks share one decoded sequence
    y2 = dec(torch.randn(3, 4, 24), ctx, torch.stack([tgt[:, 0, :5], tgt[:, 0, 5:10]], dim=1))
    assert y2.shape == (3, 2, 5, 48)


def test_equals_per_image_reference():
    dec = _decoder().eval()
    ctx, tgt = _random_split(3, 16, 4, seed=1)
    tokens = torch.randn(3, 4, 24)
    # two blocks, the second one repeating and reordering positions, to check the gather too
    tgt2 = torch.cat([tgt, tgt.flip(-1)], dim=1)
    with torch.no_grad():
        assert torch.allclose(dec(tokens, ctx, tgt2), reference_decode(dec, tokens, ctx, tgt2), atol=1e-5)


def test_context_order_and_padding_do_not_matter():
    dec = _decoder().eval()
    ctx, tgt = _random_split(2, 16, 5, seed=2)
    ctx[:, 0] = torch.tensor([3, 7])  # patch 0 stays masked: a padded entry (index 0) must not land there
    ctx = ctx.sort(1).values
    tokens = torch.randn(2, 5, 24)
    with torch.no_grad():
        y = dec(tokens, ctx, tgt)
        perm = torch.tensor([4, 2, 0, 3, 1])
        assert torch.allclose(dec(tokens[:, perm], ctx[:, perm], tgt), y, atol=1e-6)
        padded_tokens = torch.cat([tokens, 100 * torch.randn(2, 3, 24)], dim=1)
        padded_idx = torch.cat([ctx, torch.zeros(2, 3, dtype=torch.long)], dim=1)
        valid = torch.tensor([[True] * 5 + [False] * 3] * 2)
        assert torch.allclose(dec(padded_tokens, padded_idx, tgt, context_valid=valid), y, atol=1e-6)


def test_fill_sequence_values():
    tokens = torch.tensor([[[1.0, 1.0], [2.0, 2.0]]])  # (1, 2, 2)
    mask = torch.tensor([9.0, 8.0])
    full = fill_sequence(tokens, torch.tensor([[3, 1]]), None, mask, 4)
    assert torch.equal(full, torch.tensor([[[9.0, 8.0], [2.0, 2.0], [9.0, 8.0], [1.0, 1.0]]]))
    full = fill_sequence(tokens, torch.tensor([[3, 0]]), torch.tensor([[True, False]]), mask, 4)
    assert torch.equal(full, torch.tensor([[[9.0, 8.0], [9.0, 8.0], [9.0, 8.0], [1.0, 1.0]]]))


def test_gradients_reach_mask_token_and_embedding():
    dec = _decoder()
    ctx, tgt = _random_split(2, 16, 4)
    tokens = torch.randn(2, 4, 24, requires_grad=True)
    dec(tokens, ctx, tgt).pow(2).mean().backward()
    assert dec.mask_token.grad.abs().sum() > 0
    assert dec.decoder_embed.weight.grad.abs().sum() > 0
    assert tokens.grad.abs().sum() > 0
    assert not dec.decoder_pos_embed.requires_grad  # fixed table (a buffer)


@pytest.mark.parametrize("init", ["xavier", "trunc_normal"])
def test_init(init):
    dec = _decoder(embed_dim=64, num_heads=4, init=init)
    w = dec.decoder_blocks[0].mlp.fc1.weight  # (256, 64)
    if init == "xavier":  # uniform on +-sqrt(6 / (fan_in + fan_out))
        bound = (6 / (64 + 256)) ** 0.5
        assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
    else:
        assert abs(w.std().item() - 0.02) < 0.002
    assert torch.all(dec.decoder_pred.bias == 0)
    assert 0.005 < dec.mask_token.std().item() < 0.04


def test_config_checks():
    with pytest.raises(ValueError, match="num_heads"):
        MAEDecoder.Config(embed_dim=64, num_heads=6)
    with pytest.raises(ValueError, match="divisible by 4"):
        MAEDecoder.Config(embed_dim=30, num_heads=2)
