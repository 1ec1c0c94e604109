import copy

import pytest
import torch
from torch import nn

from jepaflow.target_updaters.ema import EMATargetUpdater


def test_ema_values_and_schedule():
    torch.manual_seed(0)
    online = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3))
    target = copy.deepcopy(online).requires_grad_(False)
    with torch.no_grad():
        for p in target.parameters():
            p.zero_()
    before = [p.clone() for p in online.parameters()]
    upd = EMATargetUpdater(EMATargetUpdater.Config(momentum_start=0.9, momentum_end=1.0))
    out = upd.update([(online, target)], step=0, total_steps=10)
    assert out["momentum"] == pytest.approx(0.9)
    for o, t in zip(before, target.parameters()):
        torch.testing.assert_close(t, 0.1 * o)  # 0.9 * 0 + 0.1 * online
    out = upd.update([(online, target)], step=5, total_steps=10)
    assert out["momentum"] == pytest.approx(0.95)
    for o, t in zip(before, target.parameters()):
        torch.testing.assert_close(t, 0.95 * 0.1 * o + 0.05 * o)
    # momentum 1.0 at the end: the target no longer moves
    snap = [t.clone() for t in target.parameters()]
    upd.update([(online, target)], step=10, total_steps=10)
    for s, t in zip(snap, target.parameters()):
        torch.testing.assert_close(t, s)
    # online weights untouched
    for o, p in zip(before, online.parameters()):
        torch.testing.assert_close(o, p)


def test_ema_config_rejects_decreasing_momentum():
    with pytest.raises(ValueError):
        EMATargetUpdater.Config(momentum_start=0.99, momentum_end=0.9)
