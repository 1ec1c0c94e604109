"""BYOL: the normalized regression loss against a hand computation of eq. 2, its symmetry and invariances, the
stop-gradient into the target network, the EMA wiring and a short run through the engine."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from jepaflow.config import load_recipe
from jepaflow.encoders.vit import VisionTransformerEncoder
from jepaflow.engine.logging import read_metrics
from jepaflow.engine.trainer import train
from jepaflow.heads.mlp import MLPHead
from jepaflow.interfaces import Batch
from jepaflow.objectives.byol import BYOLObjective, byol_loss, byol_symmetric_loss
from jepaflow.target_updaters.ema import EMATargetUpdater


def test_byol_loss_matches_hand_computation_on_2d_vectors():
    p = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    z = torch.tensor([[4.0, 3.0], [0.0, 2.0]])
    # row 0: (0.6, 0.8) vs (0.8, 0.6): cos = 0.96, 2 - 2 * 0.96 = 0.08 (= 0.2^2 + 0.2^2)
    # row 1: (1, 0) vs (0, 1): cos = 0, loss 2.  Mean over the batch: (0.08 + 2) / 2 = 1.04
    assert byol_loss(p, z).item() == pytest.approx(1.04, abs=1e-6)
    # symmetrized (L + L~): p1 = (3, 4) predicts z2 = (4, 3): 0.08; p2 = (1, 0) predicts z1 = (-1, 0): cos -1, 4
    p1, p2 = torch.tensor([[3.0, 4.0]]), torch.tensor([[1.0, 0.0]])
    z1, z2 = torch.tensor([[-1.0, 0.0]]), torch.tensor([[4.0, 3.0]])
    assert byol_symmetric_loss(p1, p2, z1, z2).item() == pytest.approx(4.08, abs=1e-6)


def test_byol_loss_is_symmetric_scale_invariant_and_zero_when_aligned():
    g = torch.Generator().manual_seed(0)
    p1, p2, z1, z2 = (torch.randn(8, 16, generator=g) for _ in range(4))
    # swapping the views swaps L and L~: the total is unchanged
    torch.testing.assert_close(byol_symmetric_loss(p1, p2, z1, z2), byol_symmetric_loss(p2, p1, z2, z1))
    torch.testing.assert_close(byol_loss(p1, z1), byol_loss(z1, p1))
    # only directions matter (eq. 2 normalizes both sides)
    torch.testing.assert_close(byol_loss(3.0 * p1, 0.5 * z1), byol_loss(p1, z1))
    # aligned vectors (positive multiples): zero; opposite: the maximum 4
    assert byol_loss(p1, 2.5 * p1).item() == pytest.approx(0.0, abs=1e-6)
    assert byol_loss(p1, -p1).item() == pytest.approx(4.0, abs=1e-5)
    assert 0.0 < byol_loss(p1, z1).item() < 4.0


def _objective(**cfg) -> BYOLObjective:
    torch.manual_seed(0)
    enc = VisionTransformerEncoder(VisionTransformerEncoder.Config(
        size="tiny", embed_dim=16, depth=1, num_heads=2, patch_size=4, img_size=8, in_chans=1))
    proj = MLPHead(MLPHead.Config(hidden_dims=[32], out_dim=8), in_dim=16)
    pred = MLPHead(MLPHead.Config(hidden_dims=[32], out_dim=8), in_dim=8)
    return BYOLObjective(BYOLObjective.Config(**cfg), encoder=enc, projector=proj, prediction_head=pred)


def _views(b: int = 6) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(b, 1, 8, 8, generator=g) for _ in range(2)]


def test_stop_gradient_target_gets_no_gradient_and_online_does():
    obj = _objective()
    v = _views()
    out = obj(Batch(images=v[0], views=v))
    assert out.loss.ndim == 0 and 0.0 <= out.loss.item() <= 8.0
    out.loss.backward()
    for name in ("target_encoder", "target_projector"):
        params = list(getattr(obj, name).parameters())
        assert params and all(not p.requires_grad and p.grad is None for p in params), name
    for name in ("encoder", "projector", "prediction_head"):
        grads = [p.grad for p in getattr(obj, name).parameters()]
        assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0, name
    # trainable parameters are exactly the online network's
    online = {id(p) for m in (obj.encoder, obj.projector, obj.prediction_head) for p in m.parameters()}
    assert {id(p) for p in obj.parameters() if p.requires_grad} == online
    assert set(out.metrics) == {"pos_cosine", "proj_std_norm"} and all(not m.requires_grad for m in out.metrics.values())


def test_loss_is_the_symmetrized_formula_of_the_networks_outputs():
    obj = _objective()
    v1, v2 = _views()
    out = obj(Batch(images=v1, views=[v1, v2]))
    # recompute by hand from the modules (train mode: BatchNorm uses each view's own batch statistics)
    z1 = obj.projector(obj.encoder.pool(obj.encoder(v1)))
    z2 = obj.projector(obj.encoder.pool(obj.encoder(v2)))
    t1 = obj.target_projector(obj.target_encoder.pool(obj.target_encoder(v1)))
    t2 = obj.target_projector(obj.target_encoder.pool(obj.target_encoder(v2)))
    q1, q2 = obj.prediction_head(z1), obj.prediction_head(z2)
    cos = torch.nn.functional.cosine_similarity
    expected = (2 - 2 * cos(q1, t2, dim=-1)).mean() + (2 - 2 * cos(q2, t1, dim=-1)).mean()
    torch.testing.assert_close(out.loss, expected)
    one_sided = _objective(symmetric=False)(Batch(images=v1, views=[v1, v2])).loss
    torch.testing.assert_close(one_sided, (2 - 2 * cos(q1, t2, dim=-1)).mean())


def test_target_pairs_and_ema_move_the_target_toward_the_online_network():
    obj = _objective()
    pairs = obj.target_pairs()
    assert [(o, t) for o, t in pairs] == [(obj.encoder, obj.target_encoder), (obj.projector, obj.target_projector)]
    for o, t in pairs:  # the target starts as an exact copy
        for po, pt in zip(o.parameters(), t.parameters()):
            torch.testing.assert_close(po, pt)
    before = copy.deepcopy(obj.target_projector.state_dict())
    with torch.no_grad():
        for p in obj.projector.parameters():
            p.add_(1.0)
    upd = EMATargetUpdater(EMATargetUpdater.Config(momentum_start=0.996, schedule="cosine"))
    m = upd.update(pairs, step=0, total_steps=100)["momentum"]
    assert m == pytest.approx(0.996)
    w = obj.target_projector.net[0].weight
    torch.testing.assert_close(w, before["net.0.weight"] + 0.004)  # moved by (1 - m) x the online offset
    assert obj.representation_encoder() is obj.encoder
    assert obj.encoders() == {"online": obj.encoder, "target": obj.target_encoder}


def test_objective_needs_two_views():
    with pytest.raises(ValueError, match="two views"):
        _objective()(Batch(images=torch.randn(2, 1, 8, 8)))


def test_short_engine_run_loss_goes_down(tiny_recipe):
    recipe = load_recipe(tiny_recipe({
        "data": {"num_train": 256, "image_size": 16, "channels": 1, "num_classes": 4},
        "encoder": {"img_size": 16, "in_chans": 1, "patch_size": 4, "embed_dim": 32, "depth": 1, "num_heads": 2},
        "predictor": None, "masker": None,
        "views": {"name": "two_view", "crop_scale": [0.3, 1.0], "blur_p": [0.0]},
        "projector": {"name": "mlp", "hidden_dims": [64], "out_dim": 32},
        "prediction_head": {"name": "mlp", "hidden_dims": [64], "out_dim": 32},
        "target_updater": {"name": "ema", "momentum_start": 0.99, "schedule": "cosine"},
        "objective": {"name": "byol"},
        "optim": {"epochs": 5, "warmup_epochs": 1, "lr": 2e-3, "start_lr": 2e-4},
        "train": {"batch_size": 64},
    }))
    summary = train(recipe)
    rows = read_metrics(Path(recipe.output_dir) / "metrics.jsonl")
    losses = [r["loss"] for r in rows]
    assert summary["finished"] and len(losses) == 5 * 4
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < 0.8 * first, losses
    assert {"pos_cosine", "proj_std_norm", "momentum"} <= set(rows[-1])
    assert rows[0]["momentum"] == pytest.approx(0.99) and rows[-1]["momentum"] == pytest.approx(1.0, abs=1e-4)
