"""Confidence intervals over seeds and the "no win without separation" rule, on hand-made numbers."""

from __future__ import annotations

import math

import pytest

from jepaflow.compare import stats
from jepaflow.compare.stats import Interval, mean_ci, overlaps, t_quantile_975, t_table_975, verdict


def test_t_quantiles_agree_with_scipy_and_the_table_stands_in_without_it():
    scipy_t = pytest.importorskip("scipy.stats").t
    for df in list(range(1, 31)) + [40, 60, 120]:
        assert stats.T_975[df] == pytest.approx(scipy_t.ppf(0.975, df), abs=1e-6)
    # between and beyond the rows: interpolation in 1/df, then the normal quantile
    for df in (31, 35, 45, 50, 75, 100, 150, 500, 10_000):
        assert t_table_975(df) == pytest.approx(scipy_t.ppf(0.975, df), abs=1e-3)
    assert t_quantile_975(2) == pytest.approx(4.302653, abs=1e-6)
    with pytest.raises(ValueError):
        t_quantile_975(0)


def test_the_table_is_used_when_scipy_is_missing(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_scipy(name, *args, **kwargs):
        if name.startswith("scipy"):
            raise ImportError("no scipy here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_scipy)
    assert t_quantile_975(4) == stats.T_975[4]
    assert t_quantile_975(1000) == pytest.approx(1.962339, abs=1e-3)


def test_mean_ci_by_hand():
    # three seeds: mean 0.82, s = 0.02, t(0.975, 2) = 4.302653 -> half-width 4.302653 * 0.02 / sqrt(3)
    iv = mean_ci([0.80, 0.82, 0.84])
    assert iv.n == 3
    assert iv.mean == pytest.approx(0.82)
    assert iv.std == pytest.approx(0.02)
    assert iv.half_width == pytest.approx(4.302653 * 0.02 / math.sqrt(3), rel=1e-6)
    assert (iv.low, iv.high) == pytest.approx((0.82 - 0.0496827, 0.82 + 0.0496827), abs=1e-6)
    # two seeds: t(0.975, 1) = 12.706; s = |a - b| / sqrt(2)
    iv2 = mean_ci([0.70, 0.74])
    assert iv2.half_width == pytest.approx(12.706205 * (0.04 / math.sqrt(2)) / math.sqrt(2), rel=1e-6)
    # equal values: a zero-width interval, not a missing one
    assert mean_ci([0.5, 0.5, 0.5]).half_width == 0.0


def test_one_seed_gives_no_interval():
    iv = mean_ci([0.9])
    assert iv.mean == 0.9 and iv.n == 1
    assert iv.std is None and iv.half_width is None and iv.low is None and not iv.has_interval
    with pytest.raises(ValueError):
        mean_ci([])


def test_overlap_includes_touching_and_single_values():
    a = Interval(0.80, 3, 0.01, 0.02)  # [0.78, 0.82]
    assert overlaps(a, Interval(0.84, 3, 0.01, 0.02))  # [0.82, 0.86]: touching counts
    assert not overlaps(a, Interval(0.85, 3, 0.01, 0.02))  # [0.83, 0.87]
    assert overlaps(a, Interval(0.99, 1, None, None))  # one seed: never evidence of a difference


def test_a_winner_only_without_overlap():
    rows = {"A": mean_ci([0.90, 0.91, 0.92]), "B": mean_ci([0.80, 0.81, 0.82]), "C": mean_ci([0.70, 0.71, 0.72])}
    v = verdict(rows)
    assert v.best == "A" and v.tied == ("A",)
    assert "above every other" in v.reason


def test_overlapping_intervals_are_never_a_win_whatever_the_means():
    # A's mean is higher, but B's interval reaches into A's: tied, no best
    a, b = mean_ci([0.84, 0.85, 0.86]), mean_ci([0.80, 0.83, 0.86])
    assert a.mean > b.mean and overlaps(a, b)
    v = verdict({"A": a, "B": b, "C": mean_ci([0.50, 0.51, 0.52])})
    assert v.best is None
    assert v.tied == ("A", "B")  # C lies below both: not tied
    assert "overlap" in v.reason


def test_no_winner_from_single_seeds():
    v = verdict({"A": mean_ci([0.95]), "B": mean_ci([0.60, 0.61, 0.62])})
    assert v.best is None and "one seed" in v.reason
    # the top row has an interval, the runner-up has one seed: no claim either
    v = verdict({"A": mean_ci([0.95, 0.96, 0.97]), "B": mean_ci([0.60])})
    assert v.best is None and v.tied == ("A", "B") and "one seed" in v.reason
    assert verdict({"A": mean_ci([0.9, 0.91])}).best is None  # nothing to compare with
    assert verdict({}).best is None
