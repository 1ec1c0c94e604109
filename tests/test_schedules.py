"""Schedules against the official I-JEPA schedulers' semantics (stepped before each training step)."""

import math

import pytest

from jepaflow.schedules import cosine, linear, lr_at, momentum_at, warmup_cosine, weight_decay_at


class OfficialStyleLR:
    """A restatement of the official WarmupCosineSchedule behaviour: ``step()`` increments, then computes."""

    def __init__(self, warmup, start, ref, final, T):
        self.warmup, self.start, self.ref, self.final, self.T, self.s = warmup, start, ref, final, T - warmup, 0

    def step(self):
        self.s += 1
        if self.s < self.warmup:
            return self.start + self.s / max(1, self.warmup) * (self.ref - self.start)
        p = (self.s - self.warmup) / max(1, self.T)
        return max(self.final, self.final + (self.ref - self.final) * 0.5 * (1 + math.cos(math.pi * p)))


def test_lr_matches_official_sequence():
    ref = OfficialStyleLR(warmup=10, start=2e-4, ref=1e-3, final=1e-6, T=50)
    for i in range(50):  # the whole schedule (past it the official cosine wraps around; ours stays final)
        assert lr_at(i, 10, 50, 2e-4, 1e-3, 1e-6) == pytest.approx(ref.step(), rel=1e-12)


def test_lr_key_points():
    # first step: one warmup increment above start; peak reached at the end of warmup; final at the end.
    assert lr_at(0, 10, 100, 0.0, 1.0, 0.0) == pytest.approx(0.1)
    assert lr_at(9, 10, 100, 0.0, 1.0, 0.0) == pytest.approx(1.0)
    assert lr_at(54, 10, 100, 0.0, 1.0, 0.0) == pytest.approx(0.5)  # halfway through the cosine
    assert lr_at(99, 10, 100, 0.0, 1.0, 1e-6) == pytest.approx(1e-6)
    assert lr_at(500, 10, 100, 0.0, 1.0, 1e-6) == pytest.approx(1e-6)  # clamped past the end


def test_weight_decay_cosine_increasing():
    total = 100
    vals = [weight_decay_at(i, total, 0.04, 0.4) for i in range(total)]
    assert vals[0] == pytest.approx(0.04 + 0.36 * 0.5 * (1 - math.cos(math.pi / total)))
    assert vals[49] == pytest.approx(0.22)  # s = 50: the cosine midpoint
    assert vals[-1] == pytest.approx(0.4)
    assert all(b >= a for a, b in zip(vals, vals[1:]))
    assert weight_decay_at(1000, total, 0.04, 0.4) == pytest.approx(0.4)


def test_momentum_linear_from_first_step():
    total = 200
    assert momentum_at(0, total, 0.996, 1.0) == 0.996
    assert momentum_at(100, total, 0.996, 1.0) == pytest.approx(0.998)
    assert momentum_at(200, total, 0.996, 1.0) == pytest.approx(1.0)
    # past the schedule (optim.ipe_scale < 1) it holds at the end value: never above 1
    assert momentum_at(300, total, 0.996, 1.0) == 1.0
    assert momentum_at(10**6, total, 0.99, 0.999) == pytest.approx(0.999)


def test_primitives():
    assert warmup_cosine(0, 0, 10, 0.0, 2.0, 0.0) == pytest.approx(2.0)
    assert cosine(5, 10, 1.0, 0.0) == pytest.approx(0.5)
    assert cosine(20, 10, 0.0, 1.0) == pytest.approx(1.0)
    assert linear(3, 4, 0.0, 4.0) == 3.0
