"""ViT ``forward_masked`` (BEiT/data2vec input masking): equivalences with ``forward`` and what masking hides."""

from __future__ import annotations

import pytest
import torch

from jepaflow.encoders.vit import VisionTransformerEncoder

D, P, IMG = 32, 8, 32  # 4x4 grid, N = 16


def encoder() -> VisionTransformerEncoder:
    torch.manual_seed(0)
    cfg = VisionTransformerEncoder.Config(size="tiny", embed_dim=D, depth=2, num_heads=4, patch_size=P, img_size=IMG)
    return VisionTransformerEncoder(cfg).eval()


def images(b: int = 2) -> torch.Tensor:
    return torch.randn(b, 3, IMG, IMG, generator=torch.Generator().manual_seed(1))


def test_all_false_mask_equals_forward():
    enc, x = encoder(), images()
    token = torch.randn(D)
    out = enc.forward_masked(x, torch.zeros(2, 16, dtype=torch.bool), token)
    assert out.shape == (2, 16, D)
    torch.testing.assert_close(out, enc(x), rtol=0, atol=0)


def test_true_mask_changes_the_output_and_a_token_equal_to_the_patch_embedding_changes_nothing():
    enc, x = encoder(), images()
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, 5] = True
    out = enc.forward_masked(x, mask, torch.randn(D))
    ref = enc(x)
    assert not torch.allclose(out[0], ref[0], atol=1e-4)  # attention spreads the change to every token of image 0
    torch.testing.assert_close(out[1], ref[1])  # image 1 has nothing masked
    # The token replaces the patch embedding BEFORE positions are added: a token equal to that patch's embedding
    # (without position) reproduces forward exactly.
    with torch.no_grad():
        patch5 = enc.patch_embed(x)[0, 5]
    torch.testing.assert_close(enc.forward_masked(x, mask, patch5), ref)


def test_masked_patch_content_is_hidden_and_masked_tokens_keep_their_positions():
    enc, x = encoder(), images(1)
    mask = torch.zeros(1, 16, dtype=torch.bool)
    mask[0, 0] = True  # patch (0, 0): pixels [0:8, 0:8]
    token = torch.randn(D)
    y = x.clone()
    y[..., :P, :P] = torch.randn(1, 3, P, P)  # change only the masked patch's pixels
    torch.testing.assert_close(enc.forward_masked(x, mask, token), enc.forward_masked(y, mask, token))
    # Everything masked: every input token is the same vector but positions still tell them apart.
    out = enc.forward_masked(x, torch.ones(1, 16, dtype=torch.bool), token)[0]  # (16, D)
    assert (out - out[0]).abs().amax(-1)[1:].min() > 1e-3
    # ... and the image no longer matters at all
    torch.testing.assert_close(out, enc.forward_masked(y, torch.ones(1, 16, dtype=torch.bool), token)[0])


def test_gradients_reach_the_mask_token_and_not_the_masked_pixels():
    enc = encoder().train()
    x = images().requires_grad_(True)
    token = torch.zeros(D, requires_grad=True)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[:, 0] = True
    enc.forward_masked(x, mask, token).pow(2).sum().backward()
    assert token.grad is not None and token.grad.abs().sum() > 0
    assert torch.all(x.grad[..., :P, :P] == 0)  # the masked patch's pixels do not reach the output
    assert x.grad[..., P:, P:].abs().sum() > 0
    assert enc.patch_embed.proj.weight.grad.abs().sum() > 0


def test_bad_mask_shape_is_an_error():
    enc, x = encoder(), images()
    with pytest.raises(ValueError, match="mask"):
        enc.forward_masked(x, torch.zeros(2, 15, dtype=torch.bool), torch.zeros(D))
