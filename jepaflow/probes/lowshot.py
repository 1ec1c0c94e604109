"""Low-shot linear probe: the linear probe trained on a few labels, over several seeded label draws.

Settings: ``k`` labelled images per class (``lowshot_per_class``, e.g. 1, 5, 10) and a fraction of each class's
train labels (``lowshot_fractions``, e.g. 1% and 10%, rounded, at least one image per class), as the I-JEPA paper's
1%-of-ImageNet evaluation and the k-images-per-class evaluations of MSN (Assran et al., ECCV 2022). For every
setting, ``lowshot_draws`` class-balanced draws (:func:`jepaflow.probes.splits.lowshot_draws`) are taken from the
fit part of the train split (never from the validation part, never from test). On each draw the logistic
regression of :mod:`jepaflow.probes.linear` is fit for every ``C`` of the grid, ``C`` is chosen on the validation
split, and the test accuracy of that fit is recorded; the setting reports the mean and the sample standard
deviation over draws, and every draw. Features are standardized with the statistics of the whole train split's
features (no labels are involved in that).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from jepaflow.probes.linear import accuracy, fit_logistic_regression, whitening_preconditioner
from jepaflow.probes.splits import lowshot_counts, lowshot_draws


def lowshot_settings(per_class: Sequence[int], fractions: Sequence[float]) -> list[tuple[str, dict[str, Any]]]:
    """``[(name, {"per_class": k} | {"fraction": f}), ...]``; names ``"1_per_class"``, ``"1%"``, ``"12.5%"``."""
    out: list[tuple[str, dict[str, Any]]] = [(f"{k}_per_class", {"per_class": int(k)}) for k in per_class]
    out += [(f"{100 * f:g}%", {"fraction": float(f)}) for f in fractions]
    return out


def run_lowshot(
    train_x: Tensor,
    train_y: Tensor,
    fit_idx: np.ndarray,
    val_idx: np.ndarray,
    test_x: Tensor,
    test_y: Tensor,
    num_classes: int,
    per_class: Sequence[int],
    fractions: Sequence[float],
    draws: int,
    seed: int,
    C_grid: Sequence[float],
    max_iter: int,
    tol: float,
) -> dict[str, dict[str, Any]]:
    """Every low-shot setting (module docstring) on standardized features ``train_x`` ``(N, F)``, ``test_x``
    ``(M, F)``; returns ``{setting: {"mean", "std", "accuracies", "C", "val_accuracies", "labels", "seconds"}}``
    (accuracies in [0, 1]; ``labels`` is the number of labelled images of one draw)."""
    labels_np = train_y.cpu().numpy()
    val = torch.as_tensor(val_idx, device=train_x.device)
    x_val, y_val = train_x[val], train_y[val]
    precond = whitening_preconditioner(train_x)  # of all train features (no labels): a preconditioner for every draw
    results: dict[str, dict[str, Any]] = {}
    for number, (name, setting) in enumerate(lowshot_settings(per_class, fractions)):
        t0 = time.perf_counter()
        counts = lowshot_counts(labels_np, num_classes, **setting)
        accs, chosen, val_accs, sizes = [], [], [], []
        for draw in lowshot_draws(labels_np, fit_idx, counts, draws, seed, number):
            rows = torch.as_tensor(draw, device=train_x.device)
            x, y = train_x[rows], train_y[rows]
            best: tuple[float, float, Any] | None = None  # (val accuracy, -C, fit)
            previous = None
            for C in sorted(float(c) for c in C_grid):  # regularization path, warm-started
                previous = fit_logistic_regression(x, y, num_classes, C, max_iter, tol, init=previous,
                                                   precondition=precond)
                score = (accuracy(previous.predict(x_val), y_val), -C)
                if best is None or score > best[:2]:
                    best = (*score, previous)
            val_acc, neg_c, fit = best
            accs.append(accuracy(fit.predict(test_x), test_y))
            chosen.append(-neg_c)
            val_accs.append(val_acc)
            sizes.append(len(draw))
        results[name] = {
            "mean": float(np.mean(accs)),
            "std": float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0,
            "accuracies": accs,
            "C": chosen,
            "val_accuracies": val_accs,
            "labels": sizes,
            **setting,
            "seconds": round(time.perf_counter() - t0, 3),
        }
    return results


__all__ = ["lowshot_settings", "run_lowshot"]
