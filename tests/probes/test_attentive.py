"""Attentive probe: the cross-attention head computed in its cheap order equals the literal V-JEPA form (values
and gradients), it finds a signal that only attention can, and its selection reads only the indexed rows."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from jepaflow.probes.attentive import (
    AttentiveClassifier,
    AttentivePooler,
    normalize_tokens,
    predict_attentive,
    select_and_train,
    train_attentive,
)
from jepaflow.probes.linear import linear_probe_accuracy


def randomized_pooler(dim=32, heads=4, seed=0) -> AttentivePooler:
    """A pooler whose every parameter (LayerNorm affines and biases included) is random, in float64."""
    torch.manual_seed(seed)
    pooler = AttentivePooler(dim, heads).double()
    with torch.no_grad():
        for p in pooler.parameters():
            p.normal_(0, 0.5)
    return pooler


def test_cheap_order_equals_the_literal_cross_attention():
    pooler = randomized_pooler()
    x = torch.randn(5, 7, 32, dtype=torch.float64) * 3 + 1
    torch.testing.assert_close(pooler(x), pooler.forward_reference(x))
    # ... and the normalize-once path used in training
    torch.testing.assert_close(pooler.forward_normalized(normalize_tokens(x)), pooler.forward_reference(x))
    # ... and so do the gradients of every parameter
    grads = []
    for fn in (pooler.forward, pooler.forward_reference):
        pooler.zero_grad()
        (fn(x) ** 2).sum().backward()
        grads.append({n: p.grad.clone() for n, p in pooler.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], msg=name)


def test_reference_initialization():
    torch.manual_seed(0)
    pooler = AttentivePooler(64, 4)
    assert pooler.query_tokens.shape == (1, 1, 64)
    assert abs(pooler.q.weight.std().item() - 0.02) < 0.003 and (pooler.q.bias == 0).all()
    # reference _rescale_blocks: attn proj and mlp fc2 divided by sqrt(2 * 1)
    assert abs(pooler.proj.weight.std().item() - 0.02 / math.sqrt(2)) < 0.003
    assert abs(pooler.mlp.fc2.weight.std().item() - 0.02 / math.sqrt(2)) < 0.003
    assert (pooler.norm1.weight == 1).all() and (pooler.norm1.bias == 0).all()


def attention_only_task(n: int, seed: int, tokens: int = 8, dim: int = 16, num_classes: int = 4):
    """The label is carried by one "marked" token at a random position: channel 0 is +4 there (-4 elsewhere) and
    channels 1..4 hold a one-hot of the label. The 7 other tokens hold one-hots of distractor labels -- the image's
    own label once, every other label twice -- so that every image has exactly two tokens per label: the mean
    over tokens is the same for every label (up to noise). An attention pool that looks for channel 0 = +4 reads
    the label off the marked token."""
    assert tokens == 2 * num_classes
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes, (n,), generator=g)
    x = torch.randn(n, tokens, dim, generator=g) * 0.3
    x[:, :, 0] = -4.0
    offsets = torch.tensor([0] + [k for k in range(1, num_classes) for _ in range(2)])  # 0 once, others twice
    distract = (labels[:, None] + offsets[None, :]) % num_classes  # (n, tokens - 1)
    distract = distract.gather(1, torch.argsort(torch.rand(n, tokens - 1, generator=g), dim=1))
    order = torch.argsort(torch.rand(n, tokens, generator=g), dim=1)  # a random position per token
    marked, others = order[:, 0], order[:, 1:]
    rows = torch.arange(n)
    x[rows[:, None], others, 1 + distract] += 1.0
    x[rows, marked, 0] = 4.0
    x[rows, marked, 1 + labels] += 1.0
    return x, labels


def test_attentive_finds_what_mean_pooling_cannot():
    x_tr, y_tr = attention_only_task(1200, seed=0)
    x_te, y_te = attention_only_task(400, seed=1)
    # The linear probe on mean-pooled tokens: near chance (0.25).
    linear = linear_probe_accuracy(x_tr.mean(1), y_tr, x_te.mean(1), y_te)
    model = train_attentive(normalize_tokens(x_tr.half()), y_tr, torch.arange(1200), 4, num_heads=2, lr=3e-3,
                            weight_decay=1e-3, epochs=15, batch_size=64, seed=0)
    attentive = (predict_attentive(model, normalize_tokens(x_te.half())) == y_te).float().mean().item()
    assert linear < 0.35, linear  # measured 0.282
    assert attentive > 0.85, attentive  # measured 0.952
    # deterministic for a seed
    again = train_attentive(normalize_tokens(x_tr.half()), y_tr, torch.arange(1200), 4, 2, 3e-3, 1e-3, 15, 64, 0)
    torch.testing.assert_close(again.linear.weight, model.linear.weight)


def test_select_and_train_reads_only_the_indexed_rows_and_refits():
    x, y = attention_only_task(300, seed=2)
    tokens = normalize_tokens(x)
    fit_idx, val_idx = torch.arange(0, 200), torch.arange(200, 260)
    kwargs = dict(num_classes=4, num_heads=2, lr_grid=[3e-3, 1e-4], wd_grid=[1e-3], epochs=2, batch_size=50, seed=0)
    a = select_and_train(tokens, y, fit_idx, val_idx, **kwargs)
    tokens2, y2 = tokens.clone(), y.clone()
    tokens2[260:] = torch.randn(40, 8, 16)
    y2[260:] = 0
    b = select_and_train(tokens2, y2, fit_idx, val_idx, **kwargs)
    assert a.val_accuracies == b.val_accuracies and (a.lr, a.weight_decay) == (b.lr, b.weight_decay)
    assert set(a.val_accuracies) == {"lr=0.003,wd=0.001", "lr=0.0001,wd=0.001"}
    assert a.val_accuracy == max(a.val_accuracies.values())
    # the final head is a fresh training on fit + val with the chosen setting
    refit = train_attentive(tokens, y, torch.cat([fit_idx, val_idx]), 4, 2, a.lr, a.weight_decay, 2, 50, 0)
    torch.testing.assert_close(refit.linear.weight, a.model.linear.weight)


def test_classifier_shapes_and_loss_decreases():
    x, y = attention_only_task(64, seed=3)
    model = AttentiveClassifier(16, 2, 4)
    assert model(x).shape == (64, 4)
    before = F.cross_entropy(model(x), y).item()
    trained = train_attentive(normalize_tokens(x), y, torch.arange(64), 4, 2, 3e-3, 0.0, 10, 16, 0)
    assert F.cross_entropy(trained(x), y).item() < before
