"""MAE: patchify order, loss values computed by hand, loss only on masked patches, objective wiring, and a short
engine run whose loss goes down."""

from pathlib import Path

import pytest
import torch
from torch import nn

from jepaflow.config import load_recipe
from jepaflow.encoders.vit import VisionTransformerEncoder
from jepaflow.engine.logging import read_metrics
from jepaflow.engine.trainer import train
from jepaflow.interfaces import Batch, MaskBatch
from jepaflow.objectives.mae import MAEObjective, mae_loss, normalize_patches, patchify, unpatchify
from jepaflow.predictors.mae_decoder import MAEDecoder
from jepaflow.predictors.vit_predictor import VisionTransformerPredictor

# ------------------------------------------------------------------------------------------------ patchify


def test_patchify_hand_example_and_reference_order():
    # (B=1, C=2, H=2, W=4), p=2: two patches side by side; channel 1 = channel 0 + 10
    c0 = torch.tensor([[0.0, 1, 2, 3], [4, 5, 6, 7]])
    img = torch.stack([c0, c0 + 10])[None]
    # values run over (pixel row, pixel column, channel), channel fastest
    expected = torch.tensor([[[0.0, 10, 1, 11, 4, 14, 5, 15], [2, 12, 3, 13, 6, 16, 7, 17]]])
    assert torch.equal(patchify(img, 2), expected)
    # the reference's layout: reshape (n, c, h, p, w, q), einsum 'nchpwq->nhwpqc', reshape (n, h*w, p*p*c)
    x = torch.randn(2, 3, 8, 8)
    ref = torch.einsum("nchpwq->nhwpqc", x.reshape(2, 3, 2, 4, 2, 4)).reshape(2, 4, 48)
    assert torch.equal(patchify(x, 4), ref)


def test_unpatchify_inverts_on_a_non_square_grid():
    x = torch.randn(2, 3, 8, 12)
    p = patchify(x, 4)
    assert p.shape == (2, 6, 48)
    assert torch.equal(unpatchify(p, 4, (2, 3), 3), x)
    # patch n is the pixels of grid cell (n // 3, n % 3), row-major like the encoder's tokens
    assert torch.equal(p[0, 4].reshape(4, 4, 3).permute(2, 0, 1), x[0, :, 4:8, 4:8])


# ------------------------------------------------------------------------------------------------ loss by hand
# Image (1, 1, 2, 4), p = 2: patch 0 = [1, 2, 0, 4] (visible), patch 1 = [3, 5, 6, 9] (masked).
HAND_IMAGE = torch.tensor([[[[1.0, 2.0, 3.0, 5.0], [0.0, 4.0, 6.0, 9.0]]]])


def test_normalize_patches_hand_values():
    # mean 23/4 = 5.75; deviations -2.75 -0.75 0.25 3.25; squares sum 18.75; unbiased var 18.75 / 3 = 6.25
    # -> std 2.5 -> [-1.1, -0.3, 0.1, 1.3]
    t = normalize_patches(torch.tensor([[3.0, 5.0, 6.0, 9.0]]), eps=0.0)
    assert torch.allclose(t, torch.tensor([[-1.1, -0.3, 0.1, 1.3]]), atol=1e-6)
    # eps is added to the variance: sqrt(6.25 + 2.75) = 3
    t = normalize_patches(torch.tensor([[3.0, 5.0, 6.0, 9.0]]), eps=2.75)
    assert torch.allclose(t, torch.tensor([[-2.75, -0.75, 0.25, 3.25]]) / 3, atol=1e-6)
    # per-patch normalization ignores a positive gain and an offset of each patch
    x = torch.randn(5, 16)
    assert torch.allclose(normalize_patches(3 * x + 7, 0.0), normalize_patches(x, 0.0), atol=1e-5)


def test_mae_loss_hand_values():
    target = patchify(HAND_IMAGE, 2)[:, None, 1:2]  # (1, 1, 1, 4): the masked patch
    # raw pixels, prediction 4 everywhere: errors 1, 1, 4, 25 -> mean 31 / 4
    assert torch.isclose(mae_loss(torch.full((1, 1, 1, 4), 4.0), target), torch.tensor(7.75))
    # normalized: target [-1.1, -0.3, 0.1, 1.3], prediction [-1, 0, 0, 1]: .01 .09 .01 .09 -> mean 0.05
    pred = torch.tensor([[[[-1.0, 0.0, 0.0, 1.0]]]])
    assert torch.isclose(mae_loss(pred, normalize_patches(target)), torch.tensor(0.05), atol=1e-6)
    # two masked patches with per-patch errors 1 and 3: mean over patches 2; padding not counted
    pred2 = torch.tensor([[[[1.0, 1.0], [3.0, -3.0], [50.0, 50.0]]]])
    valid = torch.tensor([[[True, True, False]]])
    assert torch.isclose(mae_loss(pred2, torch.zeros_like(pred2), valid), torch.tensor(5.0))  # (1 + 9) / 2


def test_loss_only_counts_masked_patches():
    B, N, P = 3, 16, 12
    pred_full, target_full = torch.randn(B, N, P), torch.randn(B, N, P)
    perm = torch.rand(B, N, generator=torch.Generator().manual_seed(0)).argsort(1)
    visible, masked = perm[:, :4].sort(1).values, perm[:, 4:].sort(1).values

    def ours(pf):
        pick = lambda x: torch.stack([x[b, masked[b]] for b in range(B)])[:, None]  # noqa: E731
        return mae_loss(pick(pf), pick(target_full))

    # the reference's forward_loss on full-grid predictions: mask 1 = removed
    mask = torch.ones(B, N).scatter_(1, visible, 0.0)
    ref = (((pred_full - target_full) ** 2).mean(-1) * mask).sum() / mask.sum()
    assert torch.isclose(ours(pred_full), ref)
    changed = pred_full.clone()
    for b in range(B):
        changed[b, visible[b]] += 100.0  # any prediction at a visible position
    assert torch.isclose(ours(changed), ref)
    changed[0, masked[0, 0]] += 1.0  # a masked one does count
    assert not torch.isclose(ours(changed), ref)


# ------------------------------------------------------------------------------------------------ objective
class ConstantPredictor(nn.Module):
    """Stub decoder: the same prediction for every target patch."""

    def __init__(self, values):
        super().__init__()
        self.values = nn.Parameter(torch.tensor(values))
        self.out_dim = len(values)

    def forward(self, context_tokens, context_idx, target_idx, context_valid=None, target_valid=None):
        return self.values.expand(*target_idx.shape, self.out_dim)


def _encoder(patch: int, img: int, chans: int) -> VisionTransformerEncoder:
    torch.manual_seed(0)
    return VisionTransformerEncoder(VisionTransformerEncoder.Config(
        size="tiny", patch_size=patch, img_size=img, in_chans=chans, embed_dim=16, depth=1, num_heads=2))


@pytest.mark.parametrize(("norm_pix", "pred", "expected"), [(False, [4.0] * 4, 7.75),
                                                            (True, [-1.0, 0.0, 0.0, 1.0], 0.05)])
def test_objective_hand_values(norm_pix, pred, expected):
    enc = _encoder(2, 4, 1)  # 2x2 grid: HAND_IMAGE padded with a second row of patches
    img = torch.cat([HAND_IMAGE, torch.zeros(1, 1, 2, 4)], dim=2)
    obj = MAEObjective(MAEObjective.Config(norm_pix_loss=norm_pix), encoder=enc, predictor=ConstantPredictor(pred))
    masks = MaskBatch(context=torch.tensor([[0, 2, 3]]), targets=torch.tensor([[[1]]]))
    out = obj(Batch(images=img, masks=masks))
    assert torch.isclose(out.loss, torch.tensor(expected), atol=1e-5)


def _mae(norm_pix=True):
    enc = _encoder(8, 32, 3)
    dec = MAEDecoder(MAEDecoder.Config(embed_dim=16, depth=1, num_heads=2), encoder=enc)
    return MAEObjective(MAEObjective.Config(norm_pix_loss=norm_pix), encoder=enc, predictor=dec)


def test_objective_wiring_and_gradients():
    obj = _mae()
    imgs = torch.randn(2, 3, 32, 32)
    ctx = torch.tensor([[0, 5, 10, 15], [1, 2, 3, 4]])
    all_idx = torch.arange(16)
    tgt = torch.stack([all_idx[~torch.isin(all_idx, c)] for c in ctx])[:, None]  # (2, 1, 12)
    out = obj(Batch(images=imgs, masks=MaskBatch(context=ctx, targets=tgt)))
    with torch.no_grad():
        p = obj.predictor(obj.encoder(imgs, ctx), ctx, tgt)
        # targets by hand: the 8x8x3 pixels of patch n = (row n // 4, column n % 4), in (y, x, channel) order
        t = torch.stack([torch.stack([imgs[b, :, (n // 4) * 8:(n // 4) * 8 + 8, (n % 4) * 8:(n % 4) * 8 + 8]
                                      .permute(1, 2, 0).reshape(-1) for n in tgt[b, 0].tolist()])
                         for b in range(2)])[:, None]
        t = (t - t.mean(-1, keepdim=True)) / (t.var(-1, keepdim=True) + 1e-6).sqrt()
        expected = ((p - t) ** 2).mean()
    assert torch.isclose(out.loss, expected, atol=1e-6)
    assert set(out.metrics) == {"ctx_feat_std", "recon_patch_std"}
    assert all(v.ndim == 0 and not v.requires_grad for v in out.metrics.values())
    out.loss.backward()
    assert obj.encoder.patch_embed.proj.weight.grad.abs().sum() > 0
    assert obj.predictor.mask_token.grad.abs().sum() > 0
    assert obj.target_pairs() == []
    assert obj.encoders() == {"context": obj.encoder} and obj.representation_encoder() is obj.encoder


def test_objective_needs_a_pixel_decoder():
    enc = _encoder(8, 32, 3)
    latent = VisionTransformerPredictor(VisionTransformerPredictor.Config(embed_dim=16, depth=1, num_heads=2),
                                        encoder=enc)
    with pytest.raises(ValueError, match="192"):
        MAEObjective(MAEObjective.Config(), encoder=enc, predictor=latent)
    assert MAEObjective.requires == {"encoder", "predictor", "masker"}


# ------------------------------------------------------------------------------------------------ engine run
def test_loss_goes_down_in_a_short_engine_run(tiny_recipe):
    raw = tiny_recipe({
        "target_updater": None,
        "objective": {"name": "mae"},
        "optim": {"epochs": 4, "lr": 2.0e-3, "betas": [0.9, 0.95], "weight_decay": 0.05, "final_weight_decay": 0.05},
    })
    raw["predictor"] = {"name": "mae_decoder", "embed_dim": 32, "depth": 1, "num_heads": 2}
    raw["masker"] = {"name": "random", "mask_ratio": 0.75}  # 4 of the 16 patches visible
    recipe = load_recipe(raw)
    summary = train(recipe)
    ls = [r["loss"] for r in read_metrics(Path(recipe.output_dir) / "metrics.jsonl")]
    assert summary["finished"] and len(ls) == 4 * 8
    first, last = sum(ls[:5]) / 5, sum(ls[-5:]) / 5
    assert last < 0.8 * first, ls  # measured: 1.27 -> 0.86
