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


def test_default_schedule_is_unchanged_linear_over_the_run():
    upd = EMATargetUpdater(EMATargetUpdater.Config())
    assert upd.config.schedule == "linear" and upd.config.ramp_steps is None
    # 0.996 -> 1.0 linearly over K = 200 steps: 0.996 + 0.004 * k / 200
    for k, expected in [(0, 0.996), (50, 0.997), (100, 0.998), (199, 0.99998), (200, 1.0)]:
        assert upd.momentum(k, 200) == pytest.approx(expected, abs=1e-12)


def test_cosine_schedule_byol_values_by_hand():
    # BYOL: tau = 1 - (1 - 0.996) (cos(pi k / K) + 1) / 2 with K = 100
    upd = EMATargetUpdater(EMATargetUpdater.Config(momentum_start=0.996, schedule="cosine"))
    assert upd.momentum(0, 100) == pytest.approx(0.996, abs=1e-12)
    # k = 25: cos(pi/4) = 0.7071067811865476 -> 1 - 0.004 * 0.8535533905932737 = 0.9965857864376269
    assert upd.momentum(25, 100) == pytest.approx(0.9965857864376269, abs=1e-12)
    assert upd.momentum(50, 100) == pytest.approx(0.998, abs=1e-12)  # cos(pi/2) = 0 -> 1 - 0.004 / 2
    # k = 75: cos(3pi/4) = -0.7071067811865476 -> 1 - 0.004 * 0.1464466094067262 = 0.9994142135623731
    assert upd.momentum(75, 100) == pytest.approx(0.9994142135623731, abs=1e-12)
    assert upd.momentum(100, 100) == pytest.approx(1.0, abs=1e-12)
    assert upd.momentum(150, 100) == pytest.approx(1.0, abs=1e-12)  # clamped past the schedule


def test_cosine_schedule_drives_the_update():
    online = nn.Linear(2, 2)
    target = copy.deepcopy(online).requires_grad_(False)
    with torch.no_grad():
        for p in target.parameters():
            p.zero_()
    upd = EMATargetUpdater(EMATargetUpdater.Config(momentum_start=0.9, schedule="cosine"))
    out = upd.update([(online, target)], step=50, total_steps=100)  # 1 - 0.1 * 0.5 = 0.95
    assert out["momentum"] == pytest.approx(0.95)
    for o, t in zip(online.parameters(), target.parameters()):
        torch.testing.assert_close(t, 0.05 * o.detach())


def test_linear_ramp_then_constant_data2vec_values_by_hand():
    # data2vec: tau_0 = 0.9998 -> tau_e = 0.9999 over the first tau_n = 10 updates, then constant
    upd = EMATargetUpdater(EMATargetUpdater.Config(momentum_start=0.9998, momentum_end=0.9999, ramp_steps=10))
    assert upd.momentum(0, 1000) == pytest.approx(0.9998, abs=1e-12)
    assert upd.momentum(4, 1000) == pytest.approx(0.99984, abs=1e-12)  # 0.9998 + 0.0001 * 4 / 10
    assert upd.momentum(10, 1000) == pytest.approx(0.9999, abs=1e-12)
    assert upd.momentum(500, 1000) == pytest.approx(0.9999, abs=1e-12)  # the run's length no longer matters
    # a cosine ramp reaches the end at ramp_steps too: halfway it is the midpoint
    cos = EMATargetUpdater(EMATargetUpdater.Config(momentum_start=0.99, momentum_end=1.0, schedule="cosine",
                                                   ramp_steps=20))
    assert cos.momentum(10, 1000) == pytest.approx(0.995, abs=1e-12)
    assert cos.momentum(30, 1000) == pytest.approx(1.0, abs=1e-12)


def test_ema_config_rejects_bad_schedule_fields():
    with pytest.raises(ValueError):
        EMATargetUpdater.Config(schedule="exponential")
    with pytest.raises(ValueError):
        EMATargetUpdater.Config(ramp_steps=0)
