"""SimCLR: the NT-Xent loss against a hand computation of eq. 1, its behaviour (matched vs shuffled views,
temperature), the gathered-negatives equivalence, the objective's wiring and a short run through the engine."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from doubles import TinyEncoder
from gloo import assert_two_ranks_equal_one_process

from jepaflow.config import load_recipe
from jepaflow.engine.logging import read_metrics
from jepaflow.engine.trainer import train
from jepaflow.heads.mlp import MLPHead
from jepaflow.interfaces import Batch
from jepaflow.objectives.simclr import SimCLRObjective, nt_xent, nt_xent_logits


def test_nt_xent_matches_hand_computation():
    # Two images, 2-D projections (unnormalized: the loss normalizes them).
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # a1, a2
    z2 = torch.tensor([[1.0, 1.0], [-1.0, 1.0]])  # b1, b2 (norm sqrt 2)
    t = 0.5
    r = 1 / math.sqrt(2)
    # Cosines: a1.b1 = r, a1.b2 = -r, a2.b1 = r, a2.b2 = r, a1.a2 = 0, b1.b2 = 0.
    # Each anchor: -log(exp(pos/T) / sum over the 3 other samples exp(sim/T)).
    def anchor_loss(pos, others):
        return -math.log(math.exp(pos / t) / (math.exp(pos / t) + sum(math.exp(o / t) for o in others)))

    l_a1 = anchor_loss(r, [0.0, -r])  # positive b1; negatives a2 (0), b2 (-r)
    l_a2 = anchor_loss(r, [0.0, r])  # positive b2; negatives a1 (0), b1 (r)
    l_b1 = anchor_loss(r, [r, 0.0])  # positive a1; negatives a2 (r), b2 (0)
    l_b2 = anchor_loss(r, [-r, 0.0])  # positive a2; negatives a1 (-r), b1 (0)
    expected = (l_a1 + l_a2 + l_b1 + l_b2) / 4
    assert expected == pytest.approx(0.53597, abs=1e-5)  # the number itself, for the report
    assert nt_xent(z1, z2, t).item() == pytest.approx(expected, rel=1e-6)

    logits, pos = nt_xent_logits(z1, z2, t)
    assert logits.shape == (4, 4) and pos.tolist() == [2, 3, 0, 1]
    assert torch.isneginf(logits.diagonal()).all()  # an anchor is never its own negative
    assert logits[0, 2].item() == pytest.approx(r / t, rel=1e-6)


def test_perfectly_matched_orthonormal_pairs_closed_form():
    # z1 = z2 = orthonormal rows: positive cosine 1, all 2B - 2 negatives cosine 0,
    # so l = log(1 + (2B - 2) exp(-1/T)) for every anchor.
    b = 4
    z = torch.eye(b, 8, dtype=torch.float64)
    for t in (0.1, 0.5, 1.0):
        assert nt_xent(z, z.clone(), t).item() == pytest.approx(math.log(1 + (2 * b - 2) * math.exp(-1 / t)), rel=1e-5)


def test_matched_views_give_lower_loss_than_shuffled():
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(16, 32, generator=g)
    z2 = z1 + 0.1 * torch.randn(16, 32, generator=g)  # two close views of each image
    shuffled = z2[torch.roll(torch.arange(16), 1)]  # each image paired with another image's view
    matched, mismatched = nt_xent(z1, z2, 0.1), nt_xent(z1, shuffled, 0.1)
    assert matched < 0.1 < math.log(31) < mismatched


def test_temperature_behaviour():
    g = torch.Generator().manual_seed(1)
    z1 = torch.randn(8, 16, generator=g)
    z2 = z1 + 0.2 * torch.randn(8, 16, generator=g)
    # T -> infinity: every logit -> 0, uniform over the 2B - 1 candidates.
    assert nt_xent(z1, z2, 1e4).item() == pytest.approx(math.log(15), rel=1e-3)
    # For pairs that are each other's nearest neighbours, a sharper softmax lowers the loss monotonically.
    losses = [nt_xent(z1, z2, t).item() for t in (1.0, 0.5, 0.2, 0.1, 0.05)]
    assert all(a > b for a, b in zip(losses, losses[1:])), losses
    # ... and a sharper softmax punishes mismatched pairs more.
    shuffled = z2[torch.roll(torch.arange(8), 1)]
    assert nt_xent(z1, shuffled, 0.05) > nt_xent(z1, shuffled, 0.5)


def test_gathered_negatives_equal_the_full_batch():
    # Two "ranks" of B = 3: each rank's loss uses its own rows as anchors and everyone's rows as candidates
    # (offset = rank * B). The mean over ranks is the single-process loss on the full batch, values and gradients.
    g = torch.Generator().manual_seed(2)
    world, b, k, t = 2, 3, 5, 0.2
    z1 = torch.randn(world * b, k, generator=g, requires_grad=True)
    z2 = torch.randn(world * b, k, generator=g, requires_grad=True)
    full = nt_xent(z1, z2, t)
    (g1_full, g2_full) = torch.autograd.grad(full, (z1, z2))
    per_rank = [nt_xent(z1[r * b:(r + 1) * b], z2[r * b:(r + 1) * b], t, z1, z2, offset=r * b) for r in range(world)]
    mean = sum(per_rank) / world
    assert mean.item() == pytest.approx(full.item(), rel=1e-6)
    assert not torch.allclose(per_rank[0], per_rank[1])  # the ranks really saw different anchors
    g1, g2 = torch.autograd.grad(mean, (z1, z2))
    torch.testing.assert_close(g1, g1_full)
    torch.testing.assert_close(g2, g2_full)
    # One process with its own rows as the "gathered" set is the plain loss.
    assert nt_xent(z1, z2, t, z1, z2, offset=0).item() == pytest.approx(full.item(), rel=1e-6)


def test_bad_arguments_are_rejected():
    z = torch.randn(4, 3)
    with pytest.raises(ValueError, match="both"):
        nt_xent(z, z, 0.1, z1_all=z)
    with pytest.raises(ValueError, match="offset"):
        nt_xent(z, z, 0.1, torch.randn(6, 3), torch.randn(6, 3), offset=3)


def _objective(**cfg) -> SimCLRObjective:
    torch.manual_seed(0)
    head = MLPHead(MLPHead.Config(hidden_dims=[8], out_dim=4, last_batch_norm=True, last_bias=False), in_dim=6)
    return SimCLRObjective(SimCLRObjective.Config(**cfg), encoder=TinyEncoder(), projector=head)


def test_objective_forward_metrics_and_gradients():
    assert SimCLRObjective.requires == {"encoder", "projector", "views"}
    obj = _objective(temperature=0.5)
    g = torch.Generator().manual_seed(3)
    v1, v2 = torch.randn(5, 2, 4, 4, generator=g), torch.randn(5, 2, 4, 4, generator=g)
    out = obj(Batch(images=v1, views=[v1, v2]))
    # Same value as the pure function on the projections of a joint 2B pass (BatchNorm over both views).
    z = obj.projector(obj.encoder.pool(obj.encoder(torch.cat([v1, v2]))))
    assert out.loss.item() == pytest.approx(nt_xent(z[:5], z[5:], 0.5).item(), rel=1e-6)
    assert set(out.metrics) == {"pos_cosine", "contrast_acc", "proj_std_norm"}
    assert all(m.ndim == 0 and not m.requires_grad for m in out.metrics.values())
    assert 0.0 <= out.metrics["contrast_acc"].item() <= 1.0
    out.loss.backward()
    assert obj.encoder.lin.weight.grad.abs().sum() > 0
    assert obj.projector.net[0].weight.grad.abs().sum() > 0
    assert obj.representation_encoder() is obj.encoder and obj.encoders() == {"encoder": obj.encoder}
    # Identical views: cosine 1 between the positives.
    obj.eval()
    assert obj(Batch(images=v1, views=[v1, v1])).metrics["pos_cosine"].item() == pytest.approx(1.0, abs=1e-5)


def test_objective_needs_two_views():
    obj = _objective()
    with pytest.raises(ValueError, match="two views"):
        obj(Batch(images=torch.randn(2, 2, 4, 4)))


def _two_rank_views() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(4)
    return torch.randn(8, 2, 4, 4, generator=g), torch.randn(8, 2, 4, 4, generator=g)


def _no_bn_objective() -> SimCLRObjective:
    # no BatchNorm: its statistics would differ between a rank's half batch and the full batch
    torch.manual_seed(0)
    head = MLPHead(MLPHead.Config(hidden_dims=[8], out_dim=4, batch_norm=False), in_dim=6)
    return SimCLRObjective(SimCLRObjective.Config(temperature=0.2), encoder=TinyEncoder(), projector=head)


def test_two_processes_with_gathered_negatives_equal_one_process(tmp_path):
    ranks = assert_two_ranks_equal_one_process(_no_bn_objective, _two_rank_views, tmp_path)
    assert ranks[0]["loss"].item() != pytest.approx(ranks[1]["loss"].item(), rel=1e-3)


def test_short_engine_run_loss_goes_down(tiny_recipe):
    recipe = load_recipe(tiny_recipe({
        "data": {"num_train": 256, "image_size": 16, "channels": 1, "num_classes": 4},
        "encoder": {"img_size": 16, "in_chans": 1, "patch_size": 4, "embed_dim": 32, "depth": 1, "num_heads": 2},
        "predictor": None, "masker": None, "target_updater": None,
        # mild views: a 1-block ViT learns to match crops of the synthetic shapes within 20 steps (strong jitter of
        # their flat grey levels makes instance discrimination too hard for so short a run)
        "views": {"name": "two_view", "crop_scale": [0.5, 1.0], "color_jitter_p": 0.0, "blur_p": [0.0]},
        "projector": {"name": "mlp", "hidden_dims": [64], "out_dim": 32, "last_batch_norm": True, "last_bias": False},
        "objective": {"name": "simclr", "temperature": 0.1},
        "optim": {"epochs": 5, "warmup_epochs": 1, "lr": 2e-3, "start_lr": 2e-4},
        "train": {"batch_size": 64},
    }))
    summary = train(recipe)
    rows = read_metrics(Path(recipe.output_dir) / "metrics.jsonl")
    losses = [r["loss"] for r in rows]
    assert summary["finished"] and len(losses) == 5 * 4
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < 0.9 * first, losses
    assert {"pos_cosine", "contrast_acc", "proj_std_norm"} <= set(rows[-1])
    assert rows[-1]["contrast_acc"] > rows[0]["contrast_acc"]
