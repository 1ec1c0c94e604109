"""Validation split and low-shot draws: disjoint, stratified/class-balanced, seeded, distinct."""

from __future__ import annotations

import numpy as np
import pytest

from jepaflow.errors import DataError
from jepaflow.probes.splits import balanced_draw, lowshot_counts, lowshot_draws, validation_split


def class_sorted_labels(counts=(50, 30, 20, 40)) -> np.ndarray:
    return np.repeat(np.arange(len(counts)), counts)


def test_validation_split_is_disjoint_stratified_and_seeded():
    labels = class_sorted_labels()
    fit, val = validation_split(labels, 0.1, seed=0)
    assert len(np.intersect1d(fit, val)) == 0 and len(fit) + len(val) == len(labels)
    assert np.array_equal(np.sort(np.concatenate([fit, val])), np.arange(len(labels)))
    assert np.bincount(labels[val]).tolist() == [5, 3, 2, 4]  # 10% of every class
    again, _ = validation_split(labels, 0.1, seed=0)
    other, _ = validation_split(labels, 0.1, seed=1)
    assert np.array_equal(fit, again) and not np.array_equal(fit, other)


def test_validation_split_names_the_fix_when_a_class_is_too_small():
    with pytest.raises(DataError, match="train_samples"):
        validation_split(np.array([0, 0, 0, 1]), 0.5, seed=0)


def test_balanced_draw_takes_k_per_class_from_the_pool_only():
    labels = class_sorted_labels()
    pool = np.arange(0, len(labels), 2)  # every other item
    draw = balanced_draw(labels, pool, np.array([3, 3, 3, 3]), np.random.default_rng(0))
    assert np.isin(draw, pool).all() and len(np.unique(draw)) == len(draw)
    assert np.bincount(labels[draw]).tolist() == [3, 3, 3, 3]
    # a class with fewer items than asked gives all it has
    small = balanced_draw(labels, pool, np.array([1, 100, 1, 1]), np.random.default_rng(0))
    assert np.bincount(labels[small]).tolist() == [1, 15, 1, 1]


def test_lowshot_draws_are_distinct_balanced_and_reproducible():
    labels = class_sorted_labels((200, 200, 200))
    pool = np.arange(0, 600)
    counts = lowshot_counts(labels, 3, per_class=5)
    draws = lowshot_draws(labels, pool, counts, draws=3, seed=0, setting=0)
    assert all(np.bincount(labels[d]).tolist() == [5, 5, 5] for d in draws)
    assert len({tuple(d) for d in draws}) == 3  # three different label sets
    assert all(np.array_equal(a, b) for a, b in zip(draws, lowshot_draws(labels, pool, counts, 3, 0, 0)))
    assert not np.array_equal(draws[0], lowshot_draws(labels, pool, counts, 3, 0, setting=1)[0])


def test_lowshot_counts_for_fractions():
    labels = class_sorted_labels((1000, 300, 50))
    assert lowshot_counts(labels, 3, fraction=0.01).tolist() == [10, 3, 1]  # rounded, at least one
    assert lowshot_counts(labels, 3, fraction=0.1).tolist() == [100, 30, 5]
    assert lowshot_counts(labels, 3, per_class=2).tolist() == [2, 2, 2]
    with pytest.raises(ValueError):
        lowshot_counts(labels, 3)
