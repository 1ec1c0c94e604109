"""data2vec (vision): target construction and the masked regression loss against hand computations of the
paper's formulas (sec. 3.3-3.4), the objective's wiring (mask token, head, teacher) and a short engine run."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from jepaflow.config import load_recipe
from jepaflow.encoders.vit import VisionTransformerEncoder
from jepaflow.engine.logging import read_metrics
from jepaflow.engine.trainer import train
from jepaflow.interfaces import Batch, MaskBatch
from jepaflow.objectives.data2vec import (
    Data2VecObjective,
    data2vec_loss,
    data2vec_targets,
    indices_to_mask,
    normalize_tokens,
)

EPS = 1e-5  # F.layer_norm / F.instance_norm default, as the official code uses them


def norm2(u: float, v: float) -> tuple[float, float]:
    """Parameter-free normalization of the pair (u, v) written out: (x - mean) / sqrt(var + eps), biased var."""
    mean = (u + v) / 2
    var = ((u - mean) ** 2 + (v - mean) ** 2) / 2
    s = math.sqrt(var + EPS)
    return (u - mean) / s, (v - mean) / s


# Two teacher layers for one image of N = 2 tokens of D = 2 features.
A1 = [[1.0, 3.0], [2.0, 2.0]]
A2 = [[0.0, 4.0], [5.0, 1.0]]


def test_targets_layer_norm_each_layer_then_average_then_layer_norm_by_hand():
    layers = [torch.tensor([A1]), torch.tensor([A2])]  # each (1, 2, 2)
    # per token over D: layer 1 -> [-0.999995, 0.999995], [0, 0]; layer 2 -> [-0.9999988, 0.9999988], [+, -]
    ln = [[norm2(*tok) for tok in a] for a in (A1, A2)]
    avg = [[(ln[0][n][d] + ln[1][n][d]) / 2 for d in range(2)] for n in range(2)]
    assert avg[0][0] == pytest.approx(-0.9999969, abs=1e-6) and avg[1][0] == pytest.approx(0.4999994, abs=1e-6)
    y = data2vec_targets(layers, "layer_norm", "none")
    torch.testing.assert_close(y, torch.tensor([avg]), rtol=0, atol=1e-6)
    final = [list(norm2(*tok)) for tok in avg]
    y = data2vec_targets(layers, "layer_norm", "layer_norm")
    torch.testing.assert_close(y, torch.tensor([final]), rtol=0, atol=1e-6)
    assert y.dtype == torch.float32 and y.shape == (1, 2, 2)


def test_targets_instance_norm_normalizes_each_channel_over_the_tokens_by_hand():
    layers = [torch.tensor([A1]), torch.tensor([A2])]
    # per channel d over the N = 2 tokens: layer 1 channel 0 is (1, 2), channel 1 is (3, 2); layer 2: (0, 5), (4, 1)
    in1 = [norm2(A1[0][d], A1[1][d]) for d in range(2)]  # in1[d] = (token 0, token 1)
    in2 = [norm2(A2[0][d], A2[1][d]) for d in range(2)]
    avg = [[(in1[d][n] + in2[d][n]) / 2 for d in range(2)] for n in range(2)]
    torch.testing.assert_close(data2vec_targets(layers, "instance_norm", "none"), torch.tensor([avg]), rtol=0,
                               atol=1e-6)
    # for this input every normalized channel is (-1, +1) up to eps: the average is too
    assert avg[0] == pytest.approx([-0.99998, 0.99998], abs=1e-4)
    torch.testing.assert_close(normalize_tokens(torch.tensor([A1]), "none"), torch.tensor([A1]))


def test_loss_smooth_l1_and_l2_at_masked_positions_by_hand():
    target = torch.zeros(1, 3, 2)
    pred = torch.tensor([[[1.0, 3.0], [100.0, -100.0], [-0.5, 0.0]]])
    mask = torch.tensor([[True, False, True]])
    # beta = 2: |e| < 2 -> 0.5 e^2 / 2, else |e| - 1.  Token 0: 0.25 and 2; token 2: 0.0625 and 0; token 1 ignored.
    # mean over the 2 masked tokens x 2 features: (0.25 + 2 + 0.0625 + 0) / 4 = 0.578125
    assert data2vec_loss(pred, target, mask, "smooth_l1", 2.0).item() == pytest.approx(0.578125, abs=1e-7)
    # l2: (1 + 9 + 0.25 + 0) / 4 = 2.5625
    assert data2vec_loss(pred, target, mask, "l2").item() == pytest.approx(2.5625, abs=1e-7)
    # beta = 1 (a different transition): token 0: 0.5 and 2.5; token 2: 0.125 and 0 -> 3.125 / 4
    assert data2vec_loss(pred, target, mask, "smooth_l1", 1.0).item() == pytest.approx(0.78125, abs=1e-7)
    assert data2vec_loss(pred, target, torch.zeros(1, 3, dtype=torch.bool)).item() == 0.0


def test_loss_only_counts_masked_positions():
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(2, 5, 4, generator=g, requires_grad=True)
    target = torch.randn(2, 5, 4, generator=g)
    mask = torch.tensor([[True, False, True, False, False], [False, False, False, True, True]])
    loss = data2vec_loss(pred, target, mask)
    other = pred.detach().clone()
    other[~mask] = 1e3  # change every unmasked prediction
    torch.testing.assert_close(data2vec_loss(other, target, mask), loss.detach())
    loss.backward()
    assert torch.all(pred.grad[~mask] == 0) and torch.all(pred.grad[mask].abs().sum(-1) > 0)


def test_indices_to_mask_ignores_padding():
    idx = torch.tensor([[[0, 2, 0]], [[1, 0, 0]]])  # (B=2, M=1, K=3); padding holds index 0
    valid = torch.tensor([[[True, True, False]], [[True, False, False]]])
    mask = indices_to_mask(idx, 4, valid)
    assert mask.tolist() == [[True, False, True, False], [False, True, False, False]]
    assert indices_to_mask(idx, 4).tolist() == [[True, False, True, False], [True, True, False, False]]


def _encoder() -> VisionTransformerEncoder:
    torch.manual_seed(0)
    return VisionTransformerEncoder(VisionTransformerEncoder.Config(
        size="tiny", embed_dim=16, depth=3, num_heads=2, patch_size=4, img_size=8, in_chans=1, drop_path_rate=0.5))


def _batch() -> Batch:
    images = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([[[0, 3]], [[1, 1]], [[2, 0]]])  # (B, 1, 2); image 1 repeats an index
    valid = torch.tensor([[[True, True]], [[True, True]], [[True, False]]])
    return Batch(images=images, masks=MaskBatch(context=torch.zeros(3, 1, dtype=torch.long), targets=targets,
                                                targets_valid=valid))


def test_objective_targets_loss_and_gradients():
    obj = Data2VecObjective(Data2VecObjective.Config(top_k_layers=2), encoder=_encoder()).train()
    assert obj.encoder.training and not obj.target_encoder.training  # the teacher stays in eval mode
    batch = _batch()
    mask = torch.tensor([[True, False, False, True], [False, True, False, False], [False, False, True, False]])
    # the same computation written out from the parts: teacher top-2 block outputs, layer norms, student + head
    with torch.no_grad():
        y = data2vec_targets(obj.target_encoder.forward_layers(batch.images, 2))
    torch.manual_seed(0)  # (drop path is on in the student; the teacher is deterministic)
    out = obj(batch)
    torch.manual_seed(0)
    pred = obj.head(obj.encoder.forward_masked(batch.images, mask, obj.mask_token))
    torch.testing.assert_close(out.loss, data2vec_loss(pred, y, mask, "smooth_l1", 2.0))
    assert out.metrics["mask_ratio"].item() == pytest.approx(4 / 12)
    out.loss.backward()
    assert obj.mask_token.grad is not None and obj.mask_token.grad.abs().sum() > 0
    assert obj.head.weight.grad.abs().sum() > 0 and obj.encoder.patch_embed.proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in obj.target_encoder.parameters())
    assert obj.target_pairs() == [(obj.encoder, obj.target_encoder)]
    assert obj.representation_encoder() is obj.encoder
    assert obj.encoders() == {"student": obj.encoder, "teacher": obj.target_encoder}


def test_objective_rejects_more_layers_than_the_encoder_has_and_needs_masks():
    with pytest.raises(ValueError, match="top_k_layers"):
        Data2VecObjective(Data2VecObjective.Config(top_k_layers=4), encoder=_encoder())
    obj = Data2VecObjective(Data2VecObjective.Config(top_k_layers=3), encoder=_encoder())
    with pytest.raises(ValueError, match="masker"):
        obj(Batch(images=torch.randn(2, 1, 8, 8)))


def test_short_engine_run_loss_goes_down(tiny_recipe):
    raw = tiny_recipe({
        "data": {"num_train": 256, "image_size": 16, "channels": 1, "num_classes": 4},
        "encoder": {"img_size": 16, "in_chans": 1, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2},
        "predictor": None,
        "target_updater": {"name": "ema", "momentum_start": 0.99, "momentum_end": 0.999, "ramp_steps": 10},
        "objective": {"name": "data2vec", "top_k_layers": 2},
        "optim": {"epochs": 5, "warmup_epochs": 1, "lr": 2e-3, "start_lr": 2e-4},
        "train": {"batch_size": 64},
    })
    raw["masker"] = {"name": "random", "mask_ratio": 0.6}
    recipe = load_recipe(raw)
    summary = train(recipe)
    rows = read_metrics(Path(recipe.output_dir) / "metrics.jsonl")
    losses = [r["loss"] for r in rows]
    assert summary["finished"] and len(losses) == 5 * 4
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < 0.8 * first, losses
    assert {"target_std", "pred_std", "mask_ratio", "momentum"} <= set(rows[-1])
    assert rows[-1]["mask_ratio"] == pytest.approx(10 / 16)  # floor(16 * 0.4) = 6 visible, 10 masked
    assert rows[-1]["momentum"] == pytest.approx(0.999)  # past the 10-step ramp: constant
