"""Confidence intervals over seeds, and the rule that decides when a comparison may name a winner.

A method's probe accuracy over ``n`` seeds is reported as the mean and its two-sided 95% Student-t confidence
interval, ``mean ± t_{0.975, n-1} * s / sqrt(n)`` with ``s`` the sample standard deviation (``ddof=1``). One seed
gives no interval (nothing says how much a second seed would move it), and then no claim is made.

A row is marked **best** only when its interval lies strictly above the interval of every other row; otherwise
the rows whose intervals overlap the top row's are **tied** with it. Non-overlap of two 95% intervals is a
stricter test than a two-sample t-test at 5% (it corresponds to a smaller p-value), so a marked win is a
conservative claim; overlapping intervals never become a win.

Standard library only; ``scipy.stats.t`` gives the quantile when scipy is installed, else a table
(:data:`T_975`) with interpolation in ``1/df``, the usual way to read such tables (error below 1e-3).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

#: two-sided 95% Student-t quantiles t_{0.975, df} (scipy.stats.t.ppf(0.975, df)), df = 1..30, then 40, 60, 120
T_975: dict[int, float] = {
    1: 12.706205, 2: 4.302653, 3: 3.182446, 4: 2.776445, 5: 2.570582, 6: 2.446912, 7: 2.364624, 8: 2.306004,
    9: 2.262157, 10: 2.228139, 11: 2.200985, 12: 2.178813, 13: 2.160369, 14: 2.144787, 15: 2.131450,
    16: 2.119905, 17: 2.109816, 18: 2.100922, 19: 2.093024, 20: 2.085963, 21: 2.079614, 22: 2.073873,
    23: 2.068658, 24: 2.063899, 25: 2.059539, 26: 2.055529, 27: 2.051831, 28: 2.048407, 29: 2.045230,
    30: 2.042272, 40: 2.021075, 60: 2.000298, 120: 1.979930,
}
#: the normal quantile, t's limit as df grows
Z_975 = 1.959964


def t_quantile_975(df: int) -> float:
    """``t_{0.975, df}``: scipy's when installed, else :data:`T_975` (interpolated in ``1/df`` between rows)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    try:
        from scipy.stats import t
    except ImportError:
        return t_table_975(df)
    return float(t.ppf(0.975, df))


def t_table_975(df: int) -> float:
    """:func:`t_quantile_975` without scipy: the table, interpolated linearly in ``1/df`` (the quantile is
    nearly linear in it), and the normal quantile beyond df = 120."""
    if df in T_975:
        return T_975[df]
    rows = sorted(T_975)
    if df > rows[-1]:
        lo_df, lo, hi_inv, hi = rows[-1], T_975[rows[-1]], 0.0, Z_975
    else:
        lo_df = max(d for d in rows if d < df)
        hi_df = min(d for d in rows if d > df)
        lo, hi, hi_inv = T_975[lo_df], T_975[hi_df], 1 / hi_df
    w = (1 / df - hi_inv) / (1 / lo_df - hi_inv)
    return hi + w * (lo - hi)


@dataclass(frozen=True)
class Interval:
    """Mean of ``n`` values and, for ``n >= 2``, its 95% Student-t interval ``[low, high]``."""

    mean: float
    n: int
    std: float | None  # sample standard deviation (ddof=1); None when n = 1
    half_width: float | None  # t * std / sqrt(n); None when n = 1

    @property
    def low(self) -> float | None:
        return None if self.half_width is None else self.mean - self.half_width

    @property
    def high(self) -> float | None:
        return None if self.half_width is None else self.mean + self.half_width

    @property
    def has_interval(self) -> bool:
        return self.half_width is not None


def mean_ci(values: Sequence[float]) -> Interval:
    """The mean of ``values`` with its two-sided 95% Student-t confidence interval (none for one value)."""
    vals = [float(v) for v in values]
    n = len(vals)
    if n == 0:
        raise ValueError("no values")
    mean = math.fsum(vals) / n
    if n == 1:
        return Interval(mean, 1, None, None)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in vals) / (n - 1))
    return Interval(mean, n, std, t_quantile_975(n - 1) * std / math.sqrt(n))


def overlaps(a: Interval, b: Interval) -> bool:
    """Whether two intervals share a point (touching counts). A value without an interval is treated as
    overlapping everything: one seed can be no evidence of a difference."""
    if not (a.has_interval and b.has_interval):
        return True
    return a.low <= b.high and b.low <= a.high  # type: ignore[operator]


@dataclass(frozen=True)
class Verdict:
    """The top of one probe column: ``best`` is the one row whose interval lies above every other row's, or
    None; ``tied`` lists the rows that cannot be told apart from the top row (the top row first); ``reason``
    says why in words."""

    best: str | None
    tied: tuple[str, ...]
    reason: str


def verdict(rows: Mapping[str, Interval]) -> Verdict:
    """Decide whether one row of ``rows`` (label -> interval) wins, by the rule of the module docstring."""
    if not rows:
        return Verdict(None, (), "no rows")
    ordered = sorted(rows, key=lambda k: -rows[k].mean)
    top = ordered[0]
    if len(ordered) == 1:
        return Verdict(None, (top,), "only one row: nothing to compare")
    if not rows[top].has_interval:
        return Verdict(None, tuple(ordered), f"{top} has one seed: no interval, so no winner can be named")
    tied = [top] + [k for k in ordered[1:] if overlaps(rows[top], rows[k])]
    if len(tied) == 1:
        return Verdict(top, (top,), f"{top}'s interval lies above every other row's")
    no_ci = [k for k in tied[1:] if not rows[k].has_interval]
    why = "their 95% intervals overlap"
    if no_ci:
        why += f"; {', '.join(no_ci)} {'has' if len(no_ci) == 1 else 'have'} one seed (no interval)"
    return Verdict(None, tuple(tied), f"tied at the top: {', '.join(tied)} ({why})")


__all__ = ["Interval", "T_975", "Verdict", "mean_ci", "overlaps", "t_quantile_975", "t_table_975", "verdict"]
