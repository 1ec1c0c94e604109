"""Target networks: frozen copies kept in eval mode whatever the objective's mode (so an I-JEPA target with drop
path is deterministic), BYOL's batch-statistics exception, the fused EMA update and the momentum bound."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from jepaflow.config import load_recipe
from jepaflow.encoders.vit import VisionTransformerEncoder
from jepaflow.engine.logging import read_metrics
from jepaflow.engine.trainer import train
from jepaflow.heads.mlp import MLPHead
from jepaflow.layers.target import ema_update_, frozen_copy
from jepaflow.objectives.byol import BYOLObjective
from jepaflow.objectives.data2vec import Data2VecObjective
from jepaflow.objectives.ijepa import IJEPAObjective
from jepaflow.predictors.vit_predictor import VisionTransformerPredictor
from jepaflow.target_updaters.ema import EMATargetUpdater


def _vit(drop_path_rate: float = 0.5) -> VisionTransformerEncoder:
    torch.manual_seed(0)
    return VisionTransformerEncoder(VisionTransformerEncoder.Config(
        size="tiny", embed_dim=16, depth=3, num_heads=2, patch_size=4, img_size=16, in_chans=1,
        drop_path_rate=drop_path_rate))


def test_ijepa_target_runs_without_stochastic_depth():
    enc = _vit()
    pred = VisionTransformerPredictor(VisionTransformerPredictor.Config(embed_dim=16, depth=1, num_heads=2),
                                      encoder=enc)
    obj = IJEPAObjective(IJEPAObjective.Config(), encoder=enc, predictor=pred)
    x = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    for _ in range(2):  # eval() then train() again: the target must stay in eval mode through both
        obj.eval()
        obj.train()
        assert obj.encoder.training and not any(m.training for m in obj.target_encoder.modules())
        with torch.no_grad():
            # the online encoder (train mode) samples a sub-network per call: drop path is really on ...
            assert not torch.equal(obj.encoder(x), obj.encoder(x))
            # ... and the target gives the same tokens every time
            torch.testing.assert_close(obj.target_encoder(x), obj.target_encoder(x), rtol=0, atol=0)
    assert not any(p.requires_grad for p in obj.target_encoder.parameters())


def test_data2vec_teacher_stays_in_eval_mode():
    obj = Data2VecObjective(Data2VecObjective.Config(top_k_layers=2), encoder=_vit())
    obj.train()
    assert obj.encoder.training and not any(m.training for m in obj.target_encoder.modules())


def test_byol_target_uses_batch_statistics_but_no_drop_path():
    enc = _vit()
    proj = MLPHead(MLPHead.Config(hidden_dims=[32], out_dim=8), in_dim=16)
    head = MLPHead(MLPHead.Config(hidden_dims=[32], out_dim=8), in_dim=8)
    obj = BYOLObjective(BYOLObjective.Config(), encoder=enc, projector=proj, prediction_head=head)
    obj.train()
    bns = [m for m in obj.target_projector.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert bns and all(m.training for m in bns)  # the official target normalizes with batch statistics
    others = [m for t in (obj.target_encoder, obj.target_projector) for m in t.modules() if m not in bns]
    assert not any(m.training for m in others)
    obj.eval()
    assert not any(m.training for m in obj.target_projector.modules())


def test_frozen_copy_and_fused_ema_update():
    torch.manual_seed(0)
    online = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    target = frozen_copy(online)
    assert not target.training and not any(p.requires_grad for p in target.parameters())
    assert all(torch.equal(a, b) for a, b in zip(online.state_dict().values(), target.state_dict().values()))
    with torch.no_grad():
        for p in target.parameters():
            p.zero_()
        target[1].running_mean.fill_(7.0)
    head_online, head_target = nn.Linear(2, 2), nn.Linear(2, 2)
    before = [p.detach().clone() for p in head_target.parameters()]
    ema_update_([(online, target), (head_online, head_target)], momentum=0.75)
    for o, t in zip(online.parameters(), target.parameters()):
        torch.testing.assert_close(t, 0.25 * o)  # 0.75 * 0 + 0.25 * online
    for o, b, t in zip(head_online.parameters(), before, head_target.parameters()):
        torch.testing.assert_close(t, 0.75 * b + 0.25 * o)
    assert torch.equal(target[1].running_mean, torch.full((3,), 7.0))  # buffers are the target's own
    with pytest.raises(RuntimeError, match="differ"):
        ema_update_([(online, nn.Linear(4, 3))], 0.5)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("end", [1.0, 0.999])
def test_momentum_never_exceeds_its_end(schedule, end):
    upd = EMATargetUpdater(EMATargetUpdater.Config(momentum_start=0.99, momentum_end=end, schedule=schedule))
    values = [upd.momentum(k, 80) for k in range(200)]  # a run 2.5x longer than its schedule (ipe_scale 0.4)
    assert max(values) <= end and values[-1] == pytest.approx(end)
    assert all(b >= a for a, b in zip(values, values[1:]))


def test_ipe_scale_below_one_keeps_the_momentum_at_most_one(tiny_recipe):
    # 16 steps, schedules over 8: the linear momentum 0.996 -> 1 would reach 1.002 at the last step
    r = tiny_recipe({"optim": {"ipe_scale": 0.5}, "train": {"monitor_every": None}})
    train(load_recipe(r))
    momenta = [row["momentum"] for row in read_metrics(Path(r["output_dir"]) / "metrics.jsonl")]
    assert len(momenta) == 16 and max(momenta) == 1.0 and momenta[-1] == 1.0
