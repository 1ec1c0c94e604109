"""I-JEPA loss values against hand computation, and objective behaviour."""

import torch
import torch.nn.functional as F

from jepaflow.interfaces import Batch, MaskBatch
from jepaflow.objectives.ijepa import IJEPAObjective, ijepa_loss


def test_smooth_l1_matches_hand_values():
    pred = torch.tensor([[[[0.0, 2.0], [0.5, -0.5]]]])  # (B=1, M=1, K=2, D=2)
    tgt = torch.zeros_like(pred)
    # |d| < 1: 0.5 d^2 ; |d| >= 1: |d| - 0.5  -> [0, 1.5, 0.125, 0.125], mean = 1.75 / 4
    assert torch.isclose(ijepa_loss(pred, tgt, None, "smooth_l1"), torch.tensor(1.75 / 4))
    assert torch.isclose(ijepa_loss(pred, tgt, None, "smooth_l1"), F.smooth_l1_loss(pred, tgt))


def test_l2_is_paper_eq1():
    # two blocks, two patches each, D=1: block sums 1+4=5 and 0+9=9 -> mean over blocks 7
    pred = torch.tensor([[[[1.0], [2.0]], [[0.0], [3.0]]]])
    assert torch.isclose(ijepa_loss(pred, torch.zeros_like(pred), None, "l2"), torch.tensor(7.0))


def test_padding_is_ignored():
    pred = torch.tensor([[[[1.0, 1.0], [100.0, -100.0]]]])
    valid = torch.tensor([[[True, False]]])
    tgt = torch.zeros_like(pred)
    assert torch.isclose(ijepa_loss(pred, tgt, valid, "smooth_l1"), torch.tensor(0.5))
    assert torch.isclose(ijepa_loss(pred, tgt, valid, "l2"), torch.tensor(2.0))


def _objective():
    from jepaflow.encoders.vit import VisionTransformerEncoder
    from jepaflow.predictors.vit_predictor import VisionTransformerPredictor

    torch.manual_seed(0)
    enc = VisionTransformerEncoder(VisionTransformerEncoder.Config(
        size="tiny", patch_size=8, img_size=32, embed_dim=48, depth=2, num_heads=2))
    pred = VisionTransformerPredictor(VisionTransformerPredictor.Config(embed_dim=32, depth=1, num_heads=2),
                                      encoder=enc)
    return IJEPAObjective(IJEPAObjective.Config(), encoder=enc, predictor=pred)


def test_objective_targets_and_gradients():
    obj = _objective()
    imgs = torch.randn(3, 3, 32, 32)
    ctx = torch.tensor([[0, 1, 2, 3, 4, 5]] * 3)
    tgt = torch.tensor([[[10, 11], [14, 15]]] * 3)
    out = obj(Batch(images=imgs, masks=MaskBatch(context=ctx, targets=tgt)))
    # recompute by hand: layer-normed target tokens at the target indices vs predictor output
    with torch.no_grad():
        h = F.layer_norm(obj.target_encoder(imgs), (48,))
        y = torch.stack([h[:, [10, 11]], h[:, [14, 15]]], dim=1)
        p = obj.predictor(obj.encoder(imgs, ctx), ctx, tgt)
    assert torch.isclose(out.loss, F.smooth_l1_loss(p, y), atol=1e-6)
    out.loss.backward()
    assert all(p.grad is None for p in obj.target_encoder.parameters())  # stop-gradient on the target
    assert obj.encoder.patch_embed.proj.weight.grad.abs().sum() > 0
    assert obj.predictor.mask_token.grad.abs().sum() > 0
    assert [o for o, _ in obj.target_pairs()] == [obj.encoder]
    assert obj.representation_encoder() is obj.target_encoder
    # the target starts as an exact copy
    for a, b in zip(obj.encoder.parameters(), obj.target_encoder.parameters()):
        assert torch.equal(a, b)


def test_sigreg_option_adds_the_regularizer_and_is_off_by_default():
    from jepaflow.layers.sigreg import sigreg
    from jepaflow.objectives.ijepa import masked_mean

    base = _objective()
    assert base.sigreg is None and not any("sigreg" in k for k in base.state_dict())
    torch.manual_seed(0)
    obj = IJEPAObjective(IJEPAObjective.Config(sigreg_weight=0.5, sigreg_slices=16),
                         encoder=base.encoder, predictor=base.predictor)
    imgs = torch.randn(4, 3, 32, 32)
    ctx = torch.tensor([[0, 1, 2, 3, 4, 5]] * 4)
    valid = torch.tensor([[True] * 6] * 3 + [[True] * 3 + [False] * 3])
    tgt = torch.tensor([[[10, 11], [14, 15]]] * 4)
    out = obj(Batch(images=imgs, masks=MaskBatch(context=ctx, targets=tgt, context_valid=valid)))
    with torch.no_grad():
        z = obj.encoder(imgs, ctx, valid)
        pooled = masked_mean(z, valid)
        # padded tokens do not count: the last image's mean is over its 3 valid tokens
        assert torch.allclose(pooled[3], z[3, :3].mean(0), atol=1e-6)
        dirs = obj.sigreg.directions(pooled.shape[1], pooled.device, 0)  # the first call's directions
        reg = sigreg(pooled, dirs, gather=False)
    assert torch.isclose(out.metrics["sigreg"], reg, rtol=1e-5)
    assert torch.isclose(out.loss, out.metrics["pred_loss"] + 0.5 * reg, rtol=1e-5)
    out.loss.backward()
    assert obj.encoder.patch_embed.proj.weight.grad.abs().sum() > 0


def test_standardize_over_batch_is_per_position_and_feature():
    from jepaflow.objectives.ijepa import standardize_over_batch

    g = torch.Generator().manual_seed(0)
    pos = torch.randn(1, 5, 3, generator=g) * 10  # a large part shared by every image at each position
    content = torch.randn(64, 5, 3, generator=g) * torch.tensor([0.1, 1.0, 3.0])  # per-feature scales
    out = standardize_over_batch(pos + content)
    # the shared per-position part is gone and every (position, feature) has unit variance over the batch
    torch.testing.assert_close(out.mean(0), torch.zeros(5, 3), atol=1e-5, rtol=0)
    v = content.var(0, unbiased=False)
    torch.testing.assert_close(out.var(0, unbiased=False), v / (v + 1e-5), atol=1e-4, rtol=0)  # 1 up to eps
    assert (out.var(0, unbiased=False) > 0.99).all()
    # and it is the same as standardizing the image-dependent part alone (by hand)
    c = content - content.mean(0)
    torch.testing.assert_close(out, c / (c.var(0, unbiased=False) + 1e-5).sqrt(), atol=1e-4, rtol=1e-4)


def test_layer_batch_target_norm_changes_only_the_targets():
    base = _objective()
    obj = IJEPAObjective(IJEPAObjective.Config(target_norm="layer_batch"), encoder=base.encoder,
                         predictor=base.predictor)
    imgs = torch.randn(8, 3, 32, 32)
    ctx = torch.tensor([[0, 1, 2, 3, 4, 5]] * 8)
    tgt = torch.tensor([[[10, 11], [14, 15]]] * 8)
    out = obj(Batch(images=imgs, masks=MaskBatch(context=ctx, targets=tgt)))
    with torch.no_grad():
        h = F.layer_norm(obj.target_encoder(imgs), (48,))
        h = (h - h.mean(0)) / (h.var(0, unbiased=False) + 1e-5).sqrt()
        y = torch.stack([h[:, [10, 11]], h[:, [14, 15]]], dim=1)
        p = obj.predictor(obj.encoder(imgs, ctx), ctx, tgt)
    assert torch.isclose(out.loss, F.smooth_l1_loss(p, y), atol=1e-5)
    assert not torch.isclose(out.loss, base(Batch(images=imgs, masks=MaskBatch(context=ctx, targets=tgt))).loss)


def test_position_residuals_subtract_the_batch_mean_at_each_position():
    from jepaflow.objectives.ijepa import position_residuals

    tokens = torch.tensor([[[1.0], [10.0], [99.0]], [[3.0], [20.0], [5.0]]])  # (B=2, K=3, D=1)
    idx = torch.tensor([[0, 1, 2], [0, 1, 0]])
    valid = torch.tensor([[True, True, False], [True, True, True]])  # image 0's third token is padding
    r = position_residuals(tokens, idx, num_positions=4, valid=valid)
    # position 0 holds 1, 3, 5 (mean 3); position 1 holds 10, 20 (mean 15); the padded 99 counts nowhere
    torch.testing.assert_close(r[:, :2, 0], torch.tensor([[-2.0, -5.0], [0.0, 5.0]]))
    assert r[1, 2, 0] == 2.0
    # padding sits at index 2, whose mean is empty (0): the padded row is left as is and weighted out later
    assert r[0, 2, 0] == 99.0


def test_sigreg_on_tokens_reads_position_residuals_of_valid_context_tokens():
    from jepaflow.layers.sigreg import sigreg
    from jepaflow.objectives.ijepa import position_residuals

    base = _objective()
    obj = IJEPAObjective(IJEPAObjective.Config(sigreg_weight=0.01, sigreg_slices=16, sigreg_on="tokens"),
                         encoder=base.encoder, predictor=base.predictor)
    imgs = torch.randn(4, 3, 32, 32)
    ctx = torch.tensor([[0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 5], [1, 2, 3, 6, 7, 8], [0, 2, 4, 6, 0, 0]])
    valid = torch.tensor([[True] * 6] * 3 + [[True] * 4 + [False] * 2])
    tgt = torch.tensor([[[10, 11], [14, 15]]] * 4)
    out = obj(Batch(images=imgs, masks=MaskBatch(context=ctx, targets=tgt, context_valid=valid)))
    with torch.no_grad():
        z = obj.encoder(imgs, ctx, valid)
        r = position_residuals(z, ctx, 16, valid)[valid]  # the 22 valid tokens
        reg = sigreg(r, obj.sigreg.directions(48, r.device, 0), gather=False)
    assert torch.isclose(out.metrics["sigreg"], reg, rtol=1e-4)
    assert torch.isclose(out.loss, out.metrics["pred_loss"] + 0.01 * reg, rtol=1e-5)
