"""VICReg: each term against a hand computation on a 3x2 example, the hinge and decorrelation behaviour, the
weighted total, the gathered-batch equivalence, the objective's wiring and a short run through the engine."""

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
from jepaflow.objectives.vicreg import (
    VICRegObjective,
    covariance_loss,
    covariance_matrix,
    invariance_loss,
    off_diagonal,
    variance_loss,
    vicreg_loss,
)

# Three images, two dimensions.
Z1 = torch.tensor([[1.0, 2.0], [3.0, 0.0], [2.0, 4.0]], dtype=torch.float64)
Z2 = torch.tensor([[0.5, 1.0], [1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
EPS = 1e-4


def test_terms_match_hand_computation_on_3x2():
    # Invariance: z1 - z2 = [[0.5, 1], [2, 0], [2, 2]]; mean of the squares over 3 x 2 entries.
    inv = (0.25 + 1 + 4 + 0 + 4 + 4) / 6
    assert invariance_loss(Z1, Z2).item() == pytest.approx(inv, rel=1e-12)

    # Variance (unbiased, N - 1 = 2). Z1: column 0 = [1, 3, 2] (mean 2) -> var (1 + 1 + 0) / 2 = 1;
    # column 1 = [2, 0, 4] (mean 2) -> var (0 + 4 + 4) / 2 = 4. Both stds >= 1: hinge 0.
    assert variance_loss(Z1, gamma=1.0, eps=EPS).item() == 0.0
    # Z2: column 0 = [0.5, 1, 0] (mean 0.5) -> var (0 + 0.25 + 0.25) / 2 = 0.25; column 1 = [1, 0, 2] -> var 1.
    v2 = (max(0.0, 1 - math.sqrt(0.25 + EPS)) + max(0.0, 1 - math.sqrt(1 + EPS))) / 2
    assert v2 == pytest.approx(0.24995, abs=1e-5)
    assert variance_loss(Z2, gamma=1.0, eps=EPS).item() == pytest.approx(v2, rel=1e-12)
    # A larger gamma bites on Z1's first column only: (1.5 - sqrt(1 + eps) + 0) / 2.
    assert variance_loss(Z1, gamma=1.5, eps=EPS).item() == pytest.approx((1.5 - math.sqrt(1 + EPS)) / 2, rel=1e-12)

    # Covariance: Z1 deviations [-1, 1, 0] and [0, -2, 2] -> C_01 = (0 - 2 + 0) / 2 = -1;
    # c = (C_01^2 + C_10^2) / d = (1 + 1) / 2 = 1.
    torch.testing.assert_close(covariance_matrix(Z1), torch.tensor([[1.0, -1.0], [-1.0, 4.0]], dtype=torch.float64))
    assert covariance_loss(Z1).item() == pytest.approx(1.0, rel=1e-12)
    # Z2 deviations [0, 0.5, -0.5] and [0, -1, 1] -> C_01 = (0 - 0.5 - 0.5) / 2 = -0.5; c = 2 * 0.25 / 2 = 0.25.
    assert covariance_loss(Z2).item() == pytest.approx(0.25, rel=1e-12)

    # Total, official reductions: variance averaged over the branches, covariance summed.
    loss, terms = vicreg_loss(Z1, Z2, 25.0, 25.0, 1.0, 1.0, EPS)
    assert terms["invariance"].item() == pytest.approx(inv, rel=1e-12)
    assert terms["variance"].item() == pytest.approx((0.0 + v2) / 2, rel=1e-12)
    assert terms["covariance"].item() == pytest.approx(1.0 + 0.25, rel=1e-12)
    expected = 25 * inv + 25 * v2 / 2 + 1 * 1.25
    assert expected == pytest.approx(59.5827, abs=1e-4)
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_off_diagonal_picks_exactly_the_off_diagonal_entries():
    m = torch.arange(9.0).view(3, 3)
    assert off_diagonal(m).tolist() == [1.0, 2.0, 3.0, 5.0, 6.0, 7.0]
    with pytest.raises(ValueError, match="square"):
        off_diagonal(torch.zeros(2, 3))


def test_variance_term_is_zero_when_every_std_exceeds_gamma():
    g = torch.Generator().manual_seed(0)
    z = (3.0 * torch.randn(64, 16, generator=g)).requires_grad_()
    assert (z.detach().std(0) > 1.0).all()
    v = variance_loss(z)
    assert v.item() == 0.0
    (grad,) = torch.autograd.grad(v, z)
    assert (grad == 0).all()  # the hinge is inactive: no push at all
    # Collapsed embeddings (every row the same): std = sqrt(eps), loss gamma - sqrt(eps) in every dimension.
    assert variance_loss(torch.ones(8, 4)).item() == pytest.approx(1.0 - math.sqrt(1e-4), rel=1e-6)
    # Only the dimensions under gamma count: half the dims collapsed -> half of that.
    half = torch.cat([3.0 * torch.randn(64, 8, generator=g), torch.zeros(64, 8)], dim=1)
    assert variance_loss(half).item() == pytest.approx((1.0 - math.sqrt(1e-4)) / 2, rel=1e-6)


def test_covariance_term_is_zero_for_decorrelated_dimensions():
    # Columns of a Hadamard matrix minus its all-ones column: centred and mutually orthogonal.
    h2 = torch.tensor([[1.0, 1.0], [1.0, -1.0]])
    h8 = torch.kron(torch.kron(h2, h2), h2)  # (8, 8), orthogonal columns
    z = 5.0 * h8[:, 1:]  # (8, 7), every column has mean 0 -> covariance diagonal
    assert covariance_loss(z).item() == pytest.approx(0.0, abs=1e-10)
    # Perfectly correlated dimensions: every off-diagonal entry equals the variance.
    col = torch.tensor([[0.0], [3.0], [3.0], [6.0]])  # mean 3, variance (9 + 0 + 0 + 9) / 3 = 6
    z = col.repeat(1, 3)  # d = 3: 6 off-diagonal entries of 6
    assert covariance_loss(z).item() == pytest.approx(6 * 36 / 3, rel=1e-6)


def test_total_is_the_weighted_sum_of_the_terms():
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(10, 6, generator=g), 0.3 * torch.randn(10, 6, generator=g)
    for lam, mu, nu in ((25.0, 25.0, 1.0), (1.0, 0.0, 0.0), (0.0, 2.0, 0.0), (0.0, 0.0, 3.0), (0.5, 7.0, 0.1)):
        loss, t = vicreg_loss(z1, z2, lam, mu, nu)
        expected = lam * t["invariance"].item() + mu * t["variance"].item() + nu * t["covariance"].item()
        assert loss.item() == pytest.approx(expected, rel=1e-6)
    _, t = vicreg_loss(z1, z2)
    assert t["variance"].item() == pytest.approx((variance_loss(z1) + variance_loss(z2)).item() / 2, rel=1e-6)
    assert t["covariance"].item() == pytest.approx((covariance_loss(z1) + covariance_loss(z2)).item(), rel=1e-6)


def test_gathered_batch_equals_the_full_batch():
    # Two "ranks" of 4: invariance on the local rows, variance/covariance on everyone's (official code). With equal
    # local batches the mean over ranks is the single-process loss on the full batch, values and gradients.
    g = torch.Generator().manual_seed(2)
    z1 = torch.randn(8, 5, generator=g, requires_grad=True)
    z2 = torch.randn(8, 5, generator=g, requires_grad=True)
    full, _ = vicreg_loss(z1, z2)
    g_full = torch.autograd.grad(full, (z1, z2))
    per_rank = [vicreg_loss(z1[r * 4:(r + 1) * 4], z2[r * 4:(r + 1) * 4], z1_all=z1, z2_all=z2)[0] for r in range(2)]
    mean = (per_rank[0] + per_rank[1]) / 2
    assert mean.item() == pytest.approx(full.item(), rel=1e-6)
    for a, b in zip(torch.autograd.grad(mean, (z1, z2)), g_full):
        torch.testing.assert_close(a, b)
    # Without gathering, variance/covariance of a 4-row local batch differ from the full batch's.
    local, _ = vicreg_loss(z1[:4], z2[:4])
    assert local.item() != pytest.approx(per_rank[0].item(), rel=1e-3)
    with pytest.raises(ValueError, match="both"):
        vicreg_loss(z1, z2, z1_all=z1)


def test_objective_forward_metrics_and_gradients():
    assert VICRegObjective.requires == {"encoder", "projector", "views"}
    torch.manual_seed(0)
    head = MLPHead(MLPHead.Config(hidden_dims=[8, 8], out_dim=8, last_bias=False), in_dim=6)
    obj = VICRegObjective(VICRegObjective.Config(), encoder=TinyEncoder(), projector=head)
    g = torch.Generator().manual_seed(3)
    v1, v2 = torch.randn(6, 2, 4, 4, generator=g), torch.randn(6, 2, 4, 4, generator=g)
    out = obj(Batch(images=v1, views=[v1, v2]))
    # One pass per view (BatchNorm statistics per view), then the pure loss.
    expected, _ = vicreg_loss(obj.embed(v1), obj.embed(v2))
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert set(out.metrics) == {"invariance", "variance", "covariance", "proj_std"}
    assert all(m.ndim == 0 and not m.requires_grad for m in out.metrics.values())
    m = out.metrics
    total = 25 * m["invariance"] + 25 * m["variance"] + m["covariance"]
    assert out.loss.item() == pytest.approx(total.item(), rel=1e-5)
    out.loss.backward()
    assert obj.encoder.lin.weight.grad.abs().sum() > 0 and obj.projector.net[0].weight.grad.abs().sum() > 0
    assert obj.representation_encoder() is obj.encoder
    with pytest.raises(ValueError, match="two views"):
        obj(Batch(images=v1))


def _two_rank_views() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(4)
    return torch.randn(8, 2, 4, 4, generator=g), torch.randn(8, 2, 4, 4, generator=g)


def _no_bn_objective() -> VICRegObjective:
    # no BatchNorm: its statistics would differ between a rank's half batch and the full batch
    torch.manual_seed(0)
    head = MLPHead(MLPHead.Config(hidden_dims=[8], out_dim=5, batch_norm=False, last_bias=False), in_dim=6)
    return VICRegObjective(VICRegObjective.Config(), encoder=TinyEncoder(), projector=head)


def test_two_processes_with_gathered_embeddings_equal_one_process(tmp_path):
    assert_two_ranks_equal_one_process(_no_bn_objective, _two_rank_views, tmp_path)


def test_short_engine_run_loss_goes_down(tiny_recipe):
    recipe = load_recipe(tiny_recipe({
        "data": {"num_train": 256, "image_size": 16, "channels": 1, "num_classes": 4},
        "encoder": {"img_size": 16, "in_chans": 1, "patch_size": 4, "embed_dim": 32, "depth": 1, "num_heads": 2},
        "predictor": None, "masker": None, "target_updater": None,
        # mild views (as in the SimCLR test) and a high AdamW rate: in 32 steps the expander's output std must
        # grow from ~0.3 towards gamma = 1, and Adam moves each weight by about lr per step
        "views": {"name": "two_view", "crop_scale": [0.5, 1.0], "color_jitter_p": 0.0, "blur_p": [0.0]},
        "projector": {"name": "mlp", "hidden_dims": [64, 64], "out_dim": 64, "last_bias": False},
        "objective": {"name": "vicreg"},
        "optim": {"epochs": 8, "warmup_epochs": 1, "lr": 5e-3, "start_lr": 5e-4},
        "train": {"batch_size": 64},
    }))
    summary = train(recipe)
    rows = read_metrics(Path(recipe.output_dir) / "metrics.jsonl")
    losses = [r["loss"] for r in rows]
    assert summary["finished"] and len(losses) == 8 * 4
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < 0.9 * first, losses
    assert {"invariance", "variance", "covariance", "proj_std"} <= set(rows[-1])
    # the dimensions spread out: smaller variance hinge, larger per-dimension std
    assert rows[-1]["variance"] < 0.8 * rows[0]["variance"] and rows[-1]["proj_std"] > rows[0]["proj_std"]
