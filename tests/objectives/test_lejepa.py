"""LeJEPA objective (Balestriero & LeCun 2025, arXiv 2511.08544, sec. 5.1, Algorithm 2): the prediction loss
and the total loss against values computed by hand, gradients into the global centre (no stop-gradient), the
view grouping, the paper's defaults, and a short training run through the real engine whose loss goes down."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from jepaflow.config import load_recipe
from jepaflow.engine.logging import read_metrics
from jepaflow.engine.trainer import train
from jepaflow.heads.mlp import MLPHead
from jepaflow.interfaces import Batch
from jepaflow.objectives.lejepa import LeJEPAObjective, embed_views, lejepa_loss, lejepa_prediction_loss
from jepaflow.registry import default_registry

# V = 3 views (2 global + 1 local) of B = 2 images, K = 2 projector dims; z[v, n].
Z = torch.tensor([
    [[1.0, 0.0], [0.0, 2.0]],  # global view 0
    [[3.0, 2.0], [2.0, 0.0]],  # global view 1
    [[0.0, 0.0], [1.0, 1.0]],  # local view
])
# Centres mu_n = mean of the global views: mu_0 = (2, 1), mu_1 = (1, 1).
# ||mu_n - z_vn||^2: image 0 -> 2, 2, 5; image 1 -> 2, 2, 0; total 13.


def test_prediction_loss_by_hand():
    # Algorithm 2 / official code: mean over views, images and dims: 13 / (3 * 2 * 2)
    assert lejepa_prediction_loss(Z, 2, "mean").item() == pytest.approx(13 / 12)
    # eq. (7): (1/B) sum_n (1/V) sum_v ||mu_n - z_vn||^2 = (9/3 + 4/3) / 2
    assert lejepa_prediction_loss(Z, 2, "sum").item() == pytest.approx(13 / 6)
    # one global view: every view predicts view 0; ||z0 - z_v||^2: image 0 -> 0, 8, 1; image 1 -> 0, 8, 2
    assert lejepa_prediction_loss(Z, 1, "mean").item() == pytest.approx(19 / 12)
    with pytest.raises(ValueError):
        lejepa_prediction_loss(Z, 4)


def test_centre_form_vs_pairwise_form():
    """Eq. (5) (pairwise, (1/V_g) sum_{v<=V_g} (1/V) sum_v' ||z_v - z_v'||^2) exceeds eq. (7) (centre form,
    what Algorithm 2 computes) by the spread of the global views around their centre. By hand: pairwise = 5
    for image 0 and 10/3 for image 1 (mean 25/6); spread = 2 for both images."""
    pairwise_by_hand = (5 + 10 / 3) / 2
    spread = 2.0
    assert lejepa_prediction_loss(Z, 2, "sum").item() == pytest.approx(pairwise_by_hand - spread)


def test_no_stop_gradient_on_the_centre():
    z = Z.clone().requires_grad_(True)
    lejepa_prediction_loss(z, 2, "mean").backward()
    # d/dz_gn = (2/(VBK)) [ (1/V_g) sum_v (mu_n - z_vn) - (mu_n - z_gn) ] for a global view g and
    # -(2/(VBK)) (mu_n - z_ln) for a local view l. By hand, with 2/(VBK) = 1/6:
    # sum_v (mu_0 - z_v0) = (2, 1), sum_v (mu_1 - z_v1) = (0, 0).
    want = torch.tensor([
        [[0.0, -1 / 12], [-1 / 6, 1 / 6]],
        [[1 / 3, 1 / 4], [1 / 6, -1 / 6]],
        [[-1 / 3, -1 / 6], [0.0, 0.0]],
    ])
    torch.testing.assert_close(z.grad, want)


def test_total_loss_by_hand():
    # (1 - 0.05) * 13/12 + 0.05 * mean(2, 4, 6)
    got = lejepa_loss(torch.tensor(13 / 12), torch.tensor([2.0, 4.0, 6.0]), 0.05)
    assert got.item() == pytest.approx(0.95 * 13 / 12 + 0.05 * 4.0)


def test_paper_defaults_and_contract():
    cfg = LeJEPAObjective.Config()
    got = (cfg.lamb, cfg.num_global_views, cfg.num_slices, cfg.t_max, cfg.num_points, cfg.pred_reduction)
    assert got == (0.05, 2, 1024, 5.0, 17, "mean")
    assert LeJEPAObjective.requires == frozenset({"encoder", "projector", "views"})
    assert default_registry().get("objective", "lejepa") is LeJEPAObjective


def _tiny(num_slices: int = 32, **cfg):
    enc_cls = default_registry().get("encoder", "vit")
    enc = enc_cls(enc_cls.Config(size="tiny", patch_size=4, img_size=16, in_chans=1, embed_dim=32, depth=1,
                                 num_heads=2))
    proj = MLPHead(MLPHead.Config(hidden_dims=[32], out_dim=8), in_dim=32)
    return LeJEPAObjective(LeJEPAObjective.Config(num_slices=num_slices, **cfg), encoder=enc, projector=proj)


def _views(b: int = 6, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, 1, 16, 16, generator=g) for _ in range(2)] + [
        torch.randn(b, 1, 8, 8, generator=g) for _ in range(3)]


def test_embed_views_groups_sizes_and_keeps_order():
    torch.manual_seed(0)
    obj = _tiny().eval()
    views = _views()
    h, z = embed_views(views, obj.encoder, obj.projector)
    assert h.shape == (5, 6, 32) and z.shape == (5, 6, 8)
    for v, view in enumerate(views):  # each view's features equal encoding that view alone
        torch.testing.assert_close(h[v], obj.encoder.pool(obj.encoder(view)), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(z[v], obj.projector(obj.encoder.pool(obj.encoder(view))), rtol=1e-5,
                                   atol=1e-5)


def test_forward_loss_metrics_and_gradients():
    torch.manual_seed(0)
    obj = _tiny()
    views = _views()
    out = obj(Batch(images=views[0], views=views))
    m = out.metrics
    assert set(m) == {"pred", "sigreg", "proj_std", "feat_std"}
    assert all(v.ndim == 0 and not v.requires_grad for v in m.values())
    torch.testing.assert_close(out.loss.detach(), 0.95 * m["pred"] + 0.05 * m["sigreg"])
    out.loss.backward()
    for name, p in obj.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert obj.encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert obj.sigreg.calls == 1  # fresh directions next step
    assert obj.encoders() == {"context": obj.encoder} and obj.representation_encoder() is obj.encoder
    assert obj.target_pairs() == []


def test_forward_rejects_missing_or_mismatched_views():
    obj = _tiny()
    views = _views()
    with pytest.raises(ValueError, match="views"):
        obj(Batch(images=views[0]))
    with pytest.raises(ValueError, match="global views"):
        obj(Batch(images=views[0], views=[views[0], views[2]]))  # second "global" view has another size
    with pytest.raises(ValueError, match="global views"):
        _tiny(num_global_views=3)(Batch(images=views[0], views=views[:2]))


def test_sigreg_term_separates_spread_from_collapsed_projections():
    """The objective's SIGReg term sees every view: collapsed projections cost far more than N(0, I) ones."""
    obj = _tiny(num_slices=64)
    g = torch.Generator().manual_seed(1)
    iso = torch.randn(4, 256, 8, generator=g)
    collapsed = iso * 0.01
    assert obj.sigreg(collapsed).mean() > 20 * obj.sigreg(iso).mean()


def test_training_run_loss_goes_down(tiny_recipe):
    recipe = load_recipe(tiny_recipe({
        "predictor": None, "masker": None, "target_updater": None,
        "views": {"name": "multicrop", "global_crops": 2, "local_crops": 2, "local_size": 16,
                  "brightness": 0.4, "contrast": 0.4, "saturation": 0.2, "hue": 0.1},
        "projector": {"name": "mlp", "hidden_dims": [64], "out_dim": 16},
        "objective": {"name": "lejepa", "num_slices": 64},
        "optim": {"epochs": 4, "weight_decay": 0.05, "final_weight_decay": 0.05},
    }))
    summary = train(recipe)
    rows = read_metrics(Path(recipe.output_dir) / "metrics.jsonl")
    losses = [r["loss"] for r in rows]
    assert summary["finished"] and len(losses) == 4 * 8
    assert all(k in rows[0] for k in ("pred", "sigreg", "proj_std", "feat_std"))
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.8 * first, losses
    # SIGReg is what falls: the projections move towards N(0, I)
    assert sum(r["sigreg"] for r in rows[-5:]) < sum(r["sigreg"] for r in rows[:5])
