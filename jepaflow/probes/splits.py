"""Which labelled items each probe may read: the validation split carved from the train split, and the
class-balanced label draws of the low-shot probe. Index arithmetic only (numpy), no loop over items.

The test split never appears here: hyper-parameters are chosen on a validation split taken from the train split,
and the test split is scored once, at the end, with the chosen values.
"""

from __future__ import annotations

import numpy as np

from jepaflow.errors import DataError


def validation_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(fit_idx, val_idx)``: a stratified, seeded split of ``range(len(labels))`` (scikit-learn's
    ``train_test_split(stratify=labels)``), both sorted. ``val_idx`` holds ``fraction`` of the items of every
    class (rounded by scikit-learn so that the totals add up)."""
    from sklearn.model_selection import train_test_split

    labels = np.asarray(labels)
    index = np.arange(len(labels))
    try:
        fit_idx, val_idx = train_test_split(index, test_size=fraction, stratify=labels, random_state=seed)
    except ValueError as exc:  # a class with one item, or fewer validation items than classes
        counts = np.bincount(labels)
        raise DataError(
            f"cannot carve a stratified validation split ({fraction:g} of {len(labels)} train items, "
            f"{np.count_nonzero(counts)} classes, smallest class {counts[counts > 0].min()} items): {exc}",
            "probe on more train images (probe.train_samples) or raise probe.val_fraction",
        ) from None
    return np.sort(fit_idx), np.sort(val_idx)


def balanced_draw(labels: np.ndarray, pool: np.ndarray, per_class: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``per_class[c]`` items of each class ``c`` drawn uniformly without replacement from ``pool`` (all of the
    class when it has fewer); sorted indices into ``labels``.

    One random permutation of the pool, a stable sort by label (so each class's items stay in random order),
    then the first ``per_class[c]`` of each class.
    """
    labels = np.asarray(labels)
    shuffled = pool[rng.permutation(len(pool))]
    grouped = shuffled[np.argsort(labels[shuffled], kind="stable")]  # by class; random order within a class
    cls = labels[grouped]
    starts = np.searchsorted(cls, np.arange(len(per_class)))  # first position of each class
    rank = np.arange(len(grouped)) - starts[cls]  # position within its class
    return np.sort(grouped[rank < per_class[cls]])


def lowshot_counts(labels: np.ndarray, num_classes: int, per_class: int | None = None,
                   fraction: float | None = None) -> np.ndarray:
    """Labelled items per class of a low-shot setting: ``per_class`` for every class, or ``fraction`` of each
    class's train items (rounded, at least 1) -- ``(num_classes,)`` int64."""
    if (per_class is None) == (fraction is None):
        raise ValueError("give exactly one of per_class and fraction")
    if per_class is not None:
        return np.full(num_classes, per_class, dtype=np.int64)
    counts = np.bincount(np.asarray(labels), minlength=num_classes)
    return np.maximum(1, np.rint(fraction * counts)).astype(np.int64)


def lowshot_draws(labels: np.ndarray, pool: np.ndarray, counts: np.ndarray, draws: int, seed: int,
                  setting: int) -> list[np.ndarray]:
    """``draws`` independent class-balanced label draws (see :func:`balanced_draw`) from ``pool``; draw ``d``
    of setting number ``setting`` is seeded by ``(seed, setting, d)``."""
    return [balanced_draw(labels, pool, counts, np.random.default_rng([seed, setting, d])) for d in range(draws)]


__all__ = ["balanced_draw", "lowshot_counts", "lowshot_draws", "validation_split"]
