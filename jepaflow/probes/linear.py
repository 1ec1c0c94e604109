"""Linear probe: multinomial logistic regression on frozen features, trained full-batch.

Features are standardized with the train statistics, then ``W, b`` (zero-initialized) minimize the mean
cross-entropy with full-batch AdamW: ``epochs`` steps, constant ``lr``, decoupled weight decay on ``W`` only.

Why AdamW rather than L-BFGS: on standardized features it reaches scikit-learn's LogisticRegression accuracy in
100 steps at ``lr=1e-2`` (the :class:`~jepaflow.config.ProbeConfig` defaults), each step costing exactly one
pass, whereas L-BFGS's cost depends on its line search (measured on Fashion-MNIST pixels, 1 CPU thread:
AdamW 84.4% in 24 s; L-BFGS 84.1% in 29 s at lr=1, 84.3% in 73 s at lr=1e-2). Every step is deterministic, and
the early stop acts as a mild regularizer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def standardize(train_feats: Tensor, *others: Tensor, eps: float = 1e-6) -> tuple[Tensor, ...]:
    """Centre and scale every tensor ``(N, D)`` with the per-dimension mean and std of ``train_feats``
    (constant dimensions become 0)."""
    mean = train_feats.mean(dim=0)
    std = train_feats.std(dim=0, unbiased=False).clamp_min(eps)
    return tuple((x - mean) / std for x in (train_feats, *others))


def fit_logistic_regression(
    feats: Tensor,
    labels: Tensor,
    num_classes: int,
    epochs: int = 100,
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
) -> tuple[Tensor, Tensor]:
    """``(W (D, C), b (C,))`` fit by ``epochs`` full-batch AdamW steps on ``feats`` ``(N, D)`` (float32,
    standardized) and ``labels`` ``(N,)`` int64 in 0..C-1."""
    # Callers may run under no_grad or inference_mode (features extracted with torch.inference_mode cannot be
    # saved for backward): build the parameters and train with autograd forced on, on a normal copy if needed.
    with torch.inference_mode(False), torch.enable_grad():
        if feats.is_inference():
            feats, labels = feats.clone(), labels.clone()
        weight = torch.zeros(feats.shape[1], num_classes, device=feats.device, requires_grad=True)
        bias = torch.zeros(num_classes, device=feats.device, requires_grad=True)
        opt = torch.optim.AdamW(
            [{"params": [weight], "weight_decay": weight_decay}, {"params": [bias], "weight_decay": 0.0}], lr=lr
        )
        for _ in range(epochs):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(feats @ weight + bias, labels).backward()
            opt.step()
    return weight.detach(), bias.detach()


def linear_probe_accuracy(
    train_feats: Tensor,
    train_labels: Tensor,
    test_feats: Tensor,
    test_labels: Tensor,
    epochs: int = 100,
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
    seed: int = 0,
    num_classes: int | None = None,
) -> float:
    """Top-1 test accuracy in [0, 1] of a logistic regression fit on ``train_feats`` ``(N, D)``.

    ``seed`` seeds torch (inside a forked RNG state, so the caller's stream is untouched) for any random
    choice; the zero-initialized full-batch fit draws none, so equal inputs give equal outputs. Runs on the
    features' device.
    """
    if num_classes is None:
        num_classes = int(max(int(train_labels.max()), int(test_labels.max()))) + 1
    device = train_feats.device
    train_x, test_x = standardize(train_feats.float(), test_feats.to(device, torch.float32))
    train_y = train_labels.to(device, torch.long)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        weight, bias = fit_logistic_regression(train_x, train_y, num_classes, epochs, lr, weight_decay)
    preds = (test_x @ weight + bias).argmax(dim=1)
    return (preds == test_labels.to(device)).float().mean().item()
