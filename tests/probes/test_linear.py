"""The linear probe: its loss and gradient, convergence where a fixed first-order budget falls short, agreement
with scikit-learn, invariances, and the validation-split selection of C."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from probe_helpers import gaussian_blobs

from jepaflow.probes.linear import (
    accuracy,
    fit_logistic_regression,
    linear_probe_accuracy,
    logistic_loss_and_grad,
    select_and_fit,
    standardize,
)


def ill_conditioned(n: int, seed: int, dim: int = 24, num_classes: int = 3, cond: float = 100.0):
    """Features ``x = z M`` whose covariance has condition number ``cond**2`` (singular values of ``M`` log-spaced
    from 1 to ``1/cond``, random rotations on both sides), with labels carried by the *least* varying directions:
    ``y = argmax(z[:, -3:] B)``. Standardizing each column does not undo the mixing, so the classifier needs
    weights of order ``cond`` along directions of tiny variance -- the shape of learned features. The same ``M``
    and ``B`` for every seed."""
    g = torch.Generator().manual_seed(99)
    u, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
    s = torch.logspace(0, -np.log10(cond), dim, dtype=torch.float64)
    mix = u @ torch.diag(s) @ v.T
    b = torch.randn(3, num_classes, generator=g, dtype=torch.float64) * 4
    z = torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    labels = (z[:, -3:] @ b).argmax(dim=1)
    return (z @ mix).float(), labels


def adamw_fixed_budget(x, y, num_classes, steps=100, lr=1e-2, wd=1e-4):
    """The previous probe: zero init, ``steps`` full-batch AdamW steps (decoupled decay on W only)."""
    w = torch.zeros(x.shape[1], num_classes, requires_grad=True)
    b = torch.zeros(num_classes, requires_grad=True)
    opt = torch.optim.AdamW([{"params": [w], "weight_decay": wd}, {"params": [b], "weight_decay": 0.0}], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(x @ w + b, y).backward()
        opt.step()
    return w.detach(), b.detach()


# ------------------------------------------------------------------------------------------------ loss, gradient
@pytest.mark.parametrize("chunk_rows", [None, 7])
def test_loss_and_gradient_match_autograd(chunk_rows):
    x, y = gaussian_blobs(20, 4, 6, spread=1.0, seed=0)
    x, w, b = x.double(), torch.randn(6, 4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    loss, gw, gb = logistic_loss_and_grad(x, y, w, b, l2=0.3, chunk_rows=chunk_rows)
    w_, b_ = w.clone().requires_grad_(), b.clone().requires_grad_()
    ref = F.cross_entropy(x @ w_ + b_, y) + 0.5 * 0.3 * (w_**2).sum()
    ref.backward()
    torch.testing.assert_close(loss, ref.detach())
    torch.testing.assert_close(gw, w_.grad)
    torch.testing.assert_close(gb, b_.grad)


def test_fit_reaches_a_stationary_point_of_the_regularized_objective():
    x, y = gaussian_blobs(50, 3, 8, spread=1.5, seed=0)
    x = standardize(x)[0]
    fit = fit_logistic_regression(x, y, 3, C=0.5, tol=1e-8, max_iter=500)
    assert fit.converged and fit.grad_max <= 1e-8
    _, gw, gb = logistic_loss_and_grad(x, y, fit.weight, fit.bias, l2=1 / (0.5 * len(y)))
    assert gw.abs().max() <= 1e-8 and gb.abs().max() <= 1e-8
    # Warm-started from the optimum, the solver stops at once with the same answer.
    again = fit_logistic_regression(x, y, 3, C=0.5, tol=1e-8, init=fit)
    assert again.iterations <= 1
    torch.testing.assert_close(again.weight, fit.weight)


# ------------------------------------------------------------------------------------------------ convergence
def test_converges_on_ill_conditioned_features_where_a_fixed_adamw_budget_falls_short():
    x_tr, y_tr = ill_conditioned(3000, seed=0)
    x_te, y_te = ill_conditioned(1000, seed=1)
    a, b = standardize(x_tr, x_te)
    fit = fit_logistic_regression(a, y_tr, 3, C=10.0, max_iter=3000, tol=1e-6)
    converged = accuracy(fit.predict(b), y_te)
    w, bias = adamw_fixed_budget(a, y_tr, 3)
    budget = accuracy((b @ w + bias).argmax(1), y_te)
    assert fit.converged, fit
    assert converged > 0.93, converged  # the signal is all there, in directions of tiny variance (measured 0.951)
    assert converged - budget > 0.2, (converged, budget)  # measured: 100 AdamW steps reach 0.669


def test_preconditioning_changes_the_iterations_not_the_minimum():
    x, y = ill_conditioned(2000, seed=0)
    x = standardize(x)[0]
    plain = fit_logistic_regression(x, y, 3, C=1.0, max_iter=5000, tol=1e-8, precondition=False)
    whitened = fit_logistic_regression(x, y, 3, C=1.0, max_iter=5000, tol=1e-8)
    assert plain.converged and whitened.converged
    torch.testing.assert_close(whitened.weight, plain.weight, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(whitened.bias, plain.bias, rtol=1e-5, atol=1e-5)
    assert whitened.iterations * 4 < plain.iterations, (whitened.iterations, plain.iterations)


def test_agrees_with_scikit_learn_on_ill_conditioned_features():
    sklearn = pytest.importorskip("sklearn.linear_model")
    x_tr, y_tr = ill_conditioned(1000, seed=0)
    x_te, y_te = ill_conditioned(1000, seed=1)
    a, b = standardize(x_tr, x_te)
    for C in (0.1, 10.0):
        ours = fit_logistic_regression(a, y_tr, 3, C=C, max_iter=3000, tol=1e-7)
        ref = sklearn.LogisticRegression(C=C, tol=1e-9, max_iter=10000).fit(a.double().numpy(), y_tr.numpy())
        w = torch.from_numpy(ref.coef_.T.copy())
        bias = torch.from_numpy(ref.intercept_.copy())
        # The same strictly convex objective: same minimum, hence the same predictions (up to ties).
        ref_loss = logistic_loss_and_grad(a.double(), y_tr, w, bias, 1 / (C * len(y_tr)))[0]
        assert ours.loss == pytest.approx(float(ref_loss), rel=1e-6, abs=1e-9)
        same = (ours.predict(b) == torch.from_numpy(ref.predict(b.double().numpy()))).float().mean().item()
        assert same >= 0.995, (C, same)


# ------------------------------------------------------------------------------------------------ behaviour
def test_separable_gives_near_100_and_random_labels_give_chance():
    train, train_labels = gaussian_blobs(200, 4, 16, spread=6.0, seed=0)
    test, test_labels = gaussian_blobs(100, 4, 16, spread=6.0, seed=1)
    acc = linear_probe_accuracy(train, train_labels, test, test_labels)
    assert acc > 0.98
    assert linear_probe_accuracy(train, train_labels, test, test_labels) == acc  # deterministic
    # Labels drawn independently of the features, on both sides: nothing to learn, chance is 0.25 (the std of
    # the estimate on 400 test items is 0.022).
    g = torch.Generator().manual_seed(0)
    random_train, random_test = torch.randint(0, 4, (800,), generator=g), torch.randint(0, 4, (400,), generator=g)
    chance = linear_probe_accuracy(train, random_train, test, random_test)
    assert abs(chance - 0.25) < 0.08, chance


def test_runs_under_no_grad_and_inference_mode():
    train, train_labels = gaussian_blobs(20, 2, 4, spread=6.0, seed=0)
    expected = linear_probe_accuracy(train, train_labels, train, train_labels)
    with torch.no_grad():
        assert linear_probe_accuracy(train, train_labels, train, train_labels) == expected
    with torch.inference_mode():
        x, y = train.clone(), train_labels.clone()
        assert linear_probe_accuracy(x, y, x, y) == expected
    assert expected > 0.95


def test_is_invariant_to_per_dimension_affine_maps():
    """Standardizing with train statistics makes the probe blind to feature units and offsets."""
    train, train_labels = gaussian_blobs(50, 3, 10, spread=2.0, seed=0)
    test, test_labels = gaussian_blobs(30, 3, 10, spread=2.0, seed=1)
    g = torch.Generator().manual_seed(3)
    scale, shift = torch.rand(10, generator=g) * 100 + 0.01, torch.randn(10, generator=g) * 50
    a = standardize(train, test)
    b = standardize(train * scale + shift, test * scale + shift)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-4)
    assert torch.allclose(a[0].mean(0), torch.zeros(10), atol=1e-5)
    assert torch.allclose(a[0].std(0, unbiased=False), torch.ones(10), atol=1e-4)
    assert linear_probe_accuracy(train, train_labels, test, test_labels) == linear_probe_accuracy(
        train * scale + shift, train_labels, test * scale + shift, test_labels)


# ------------------------------------------------------------------------------------------------ selection
def test_select_and_fit_chooses_on_validation_and_refits_on_both_parts():
    x, y = gaussian_blobs(60, 3, 12, spread=1.2, seed=0)
    x = standardize(x)[0]
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    fit_idx, val_idx = perm[:120].sort().values, perm[120:].sort().values
    grid = [10.0, 0.001, 0.1]  # any order
    sel = select_and_fit(x, y, fit_idx, val_idx, 3, grid, tol=1e-6)
    assert set(sel.val_accuracies) == {0.001, 0.1, 10.0}
    for C in sel.val_accuracies:  # each grid value scored by a fit on the fit part alone
        alone = fit_logistic_regression(x[fit_idx], y[fit_idx], 3, C, tol=1e-6)
        assert sel.val_accuracies[C] == pytest.approx(accuracy(alone.predict(x[val_idx]), y[val_idx]), abs=1 / 60)
    best = max(sel.val_accuracies.values())
    assert sel.val_accuracy == best and sel.val_accuracies[sel.C] == best
    assert sel.C == min(c for c, a in sel.val_accuracies.items() if a == best)  # ties: stronger penalty
    refit = fit_logistic_regression(x, y, 3, sel.C, tol=1e-6)  # fit + val = every row here
    torch.testing.assert_close(sel.fit.weight, refit.weight, rtol=1e-3, atol=1e-4)
    assert sel.solver["refit"]["converged"] and set(sel.solver) == {"0.001", "0.1", "10", "refit"}


def test_select_and_fit_reads_only_the_indexed_rows():
    x, y = gaussian_blobs(40, 2, 6, spread=2.0, seed=0)
    x = standardize(x)[0]
    fit_idx, val_idx = torch.arange(0, 80, 2), torch.arange(1, 60, 2)
    outside = torch.arange(61, 80, 2)
    a = select_and_fit(x, y, fit_idx, val_idx, 2, [0.01, 1.0])
    x2, y2 = x.clone(), y.clone()
    x2[outside] = torch.randn(len(outside), 6) * 100  # rows no index names: changing them changes nothing
    y2[outside] = 1 - y2[outside]
    b = select_and_fit(x2, y2, fit_idx, val_idx, 2, [0.01, 1.0])
    assert a.C == b.C and a.val_accuracies == b.val_accuracies
    torch.testing.assert_close(a.fit.weight, b.fit.weight)
