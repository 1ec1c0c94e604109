"""Attentive probe: one learned query cross-attends over frozen patch tokens, then a linear classifier.

The head is V-JEPA's frozen evaluation head (Bardes et al., "Revisiting Feature Prediction for Learning Visual
Representations from Video", 2024, sec. 4; facebookresearch/jepa ``src/models/attentive_pooler.py``:
``AttentiveClassifier`` with ``num_queries=1, depth=1, complete_block=True``)::

    q   = query                                            (1, D)  learned, trunc-normal(0.02) init
    q   = q + proj(MHA(q Wq, LN1(x) Wk, LN1(x) Wv))        (B, D)  cross-attention; the query is not normalized
    q   = q + MLP(LN2(q))                                  (B, D)  GELU MLP, hidden 4 D
    out = Linear(q)                                        (B, C)

Training follows V-JEPA's ``evals/image_classification_frozen/eval.py``: AdamW, no weight decay on biases and
1-D parameters, learning rate and weight decay decayed by a cosine to 0 over the run without warmup, gradients
clipped to norm 1, cross-entropy. Weights are initialized as there (trunc-normal 0.02 for every Linear of the
pooler, ``attn.proj`` and ``mlp.fc2`` divided by sqrt(2)); the classifier keeps PyTorch's default init, as the
reference's ``nn.Linear`` does.

Computation order. With a single query that is a parameter (the same for every image), the attention logits
``q_h . k_{b,t,h}`` equal ``LN1(x_{b,t}) . u_h`` plus a constant per head, where ``u_h = scale Wk_h^T q_h``, and the
attention output is ``Wv_h (sum_t a_{b,t,h} LN1(x_{b,t})) + bv_h`` because the weights sum to 1. Computing it in
that order costs ``O(T D H)`` per image instead of the ``O(T D^2)`` of projecting every token to keys and values,
and gives the same numbers (``tests/probes/test_attentive.py`` checks it against the literal form). The
normalization ``(x - mean) / std`` inside ``LN1`` has no parameters, so it is applied to the frozen tokens once,
before training (:func:`normalize_tokens`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import Tensor, nn

from jepaflow.schedules import cosine

#: LayerNorm epsilon of the reference head (``nn.LayerNorm`` default)
LN_EPS = 1e-5


def normalize_tokens(tokens: Tensor, eps: float = LN_EPS, chunk_rows: int = 4096) -> Tensor:
    """LayerNorm without affine parameters over the last dim: ``(N, T, D) -> (N, T, D)``, same dtype; computed by
    chunks of ``chunk_rows`` images, in float32 at least (the input may be float16)."""
    out = torch.empty_like(tokens)
    for start in range(0, tokens.shape[0], chunk_rows):
        chunk = tokens[start : start + chunk_rows]
        if chunk.element_size() < 4:  # float16/bfloat16 storage: normalize in float32
            chunk = chunk.float()
        out[start : start + chunk_rows] = F.layer_norm(chunk, chunk.shape[-1:], eps=eps).to(tokens.dtype)
    return out


class AttentivePooler(nn.Module):
    """One learned query, one cross-attention block: ``(B, T, D)`` tokens -> ``(B, D)``.

    Parameter names follow the reference (``query_tokens``, ``norm1``, ``xattn.q``, ``xattn.kv``, ``xattn.proj``,
    ``norm2``, ``mlp.fc1``, ``mlp.fc2``), flattened one level (``q``, ``kv``, ``proj``).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, init_std: float = 0.02):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"token width {dim} is not divisible by {num_heads} heads")
        self.dim, self.num_heads = dim, num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.query_tokens = nn.Parameter(torch.zeros(1, 1, dim))
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)
        nn.init.trunc_normal_(self.query_tokens, std=init_std)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=init_std)
                nn.init.zeros_(m.bias)
        with torch.no_grad():  # reference _rescale_blocks, layer_id 1
            self.proj.weight.div_(math.sqrt(2.0))
            self.mlp.fc2.weight.div_(math.sqrt(2.0))

    def forward(self, tokens: Tensor) -> Tensor:
        """``(B, T, D)`` raw tokens -> ``(B, D)``."""
        x = tokens.to(self.query_tokens.dtype)
        return self.forward_normalized(F.layer_norm(x, (self.dim,), eps=LN_EPS))

    def forward_normalized(self, tokens_hat: Tensor) -> Tensor:
        """``(B, T, D)`` tokens already normalized by :func:`normalize_tokens` -> ``(B, D)``."""
        x_hat = tokens_hat.to(self.query_tokens.dtype)  # float16 storage -> the head's dtype
        B, D, H = x_hat.shape[0], self.dim, self.num_heads
        dh = D // H
        gamma, beta = self.norm1.weight, self.norm1.bias
        query = self.query_tokens.reshape(1, D)
        q = self.q(query).reshape(H, dh)  # (H, dh), the same for every image
        w_k, w_v = self.kv.weight[:D].reshape(H, dh, D), self.kv.weight[D:].reshape(H, dh, D)
        b_v = self.kv.bias[D:].reshape(H, dh)
        u = self.scale * torch.einsum("he,hed->hd", q, w_k)  # (H, D): q_h . Wk_h x = u_h . x
        logits = x_hat @ (gamma[:, None] * u.T)  # (B, T, H); per-head constants dropped (softmax-invariant)
        attn = logits.softmax(dim=1)  # over tokens
        pooled = torch.einsum("bth,btd->bhd", attn, x_hat) * gamma + beta  # (B, H, D) = sum_t a LN1(x_t)
        values = torch.einsum("bhd,hed->bhe", pooled, w_v) + b_v  # (B, H, dh)
        out = query + self.proj(values.reshape(B, D))  # (B, D)
        return out + self.mlp(self.norm2(out))

    def forward_reference(self, tokens: Tensor) -> Tensor:
        """The literal computation (keys and values of every token, SDPA): ``(B, T, D) -> (B, D)``. For tests."""
        B, T, D = tokens.shape
        H, dh = self.num_heads, D // self.num_heads
        x = self.norm1(tokens)
        q = self.q(self.query_tokens).expand(B, 1, D).reshape(B, 1, H, dh).transpose(1, 2)  # (B, H, 1, dh)
        kv = self.kv(x).reshape(B, T, 2, H, dh).permute(2, 0, 3, 1, 4)  # (2, B, H, T, dh)
        y = F.scaled_dot_product_attention(q, kv[0], kv[1])  # (B, H, 1, dh)
        out = self.query_tokens.reshape(1, D) + self.proj(y.transpose(1, 2).reshape(B, D))
        return out + self.mlp(self.norm2(out))


class AttentiveClassifier(nn.Module):
    """:class:`AttentivePooler` then ``Linear(D, num_classes)``: ``(B, T, D) -> (B, num_classes)``."""

    def __init__(self, dim: int, num_heads: int, num_classes: int):
        super().__init__()
        self.pooler = AttentivePooler(dim, num_heads)
        self.linear = nn.Linear(dim, num_classes)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.linear(self.pooler(tokens))

    def forward_normalized(self, tokens_hat: Tensor) -> Tensor:
        return self.linear(self.pooler.forward_normalized(tokens_hat))


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Reference ``init_opt``: weight decay on every parameter except biases and 1-D ones (norms)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if name.endswith("bias") or p.ndim == 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def train_attentive(
    tokens_hat: Tensor,
    labels: Tensor,
    train_idx: Tensor,
    num_classes: int,
    num_heads: int,
    lr: float,
    weight_decay: float,
    epochs: int,
    batch_size: int,
    seed: int,
) -> AttentiveClassifier:
    """Train a fresh :class:`AttentiveClassifier` on ``tokens_hat[train_idx]`` (see the module docstring).

    Args:
        tokens_hat: ``(N, T, D)`` normalized tokens (float16 or float32), on the device to train on.
        labels: ``(N,)`` int64; train_idx: ``(n,)`` int64 rows to train on.
        seed: seeds the initialization and the order of the items (one permutation per epoch).
    """
    device = tokens_hat.device
    labels = labels.to(device)
    train_idx = train_idx.to(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        model = AttentiveClassifier(tokens_hat.shape[-1], num_heads, num_classes).to(device)
    order_gen = torch.Generator(device="cpu").manual_seed(seed)
    opt = torch.optim.AdamW(_param_groups(model, weight_decay), lr=lr)
    steps_per_epoch = math.ceil(len(train_idx) / batch_size)
    total = epochs * steps_per_epoch
    model.train()
    step = 0
    with torch.inference_mode(False), torch.enable_grad():
        for _ in range(epochs):
            perm = train_idx[torch.randperm(len(train_idx), generator=order_gen).to(device)]
            for start in range(0, len(perm), batch_size):
                rows = perm[start : start + batch_size]
                factor = cosine(step + 1, total, 1.0, 0.0)  # the reference steps its schedulers before each step
                for group, wd in zip(opt.param_groups, (weight_decay, 0.0)):
                    group["lr"], group["weight_decay"] = lr * factor, wd * factor
                loss = F.cross_entropy(model.forward_normalized(tokens_hat[rows]), labels[rows])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                step += 1
    model.eval()
    return model


@torch.no_grad()
def predict_attentive(model: AttentiveClassifier, tokens_hat: Tensor, batch_size: int = 1024) -> Tensor:
    """Labels ``(N,)`` int64 of normalized tokens ``(N, T, D)``, in batches."""
    preds = [model.forward_normalized(tokens_hat[s : s + batch_size]).argmax(dim=1)
             for s in range(0, tokens_hat.shape[0], batch_size)]
    return torch.cat(preds)


@dataclass
class AttentiveSelection:
    """What :func:`select_and_train` found: the refit model, the chosen ``(lr, weight_decay)``, its validation
    accuracy and every grid point's (keys ``"lr=..,wd=.."``)."""

    model: AttentiveClassifier
    lr: float
    weight_decay: float
    val_accuracy: float
    val_accuracies: dict[str, float] = field(default_factory=dict)


def select_and_train(
    tokens_hat: Tensor,
    labels: Tensor,
    fit_idx: Tensor,
    val_idx: Tensor,
    num_classes: int,
    num_heads: int,
    lr_grid: Sequence[float],
    wd_grid: Sequence[float],
    epochs: int,
    batch_size: int,
    seed: int,
) -> AttentiveSelection:
    """Train one head per ``(lr, wd)`` of the grid on ``fit_idx``, score each on ``val_idx``, then train the
    chosen setting again on ``fit_idx`` and ``val_idx`` together (same seed). Ties go to the first grid point
    (grid order: ``lr`` major). Only rows of the given indices are read."""
    labels = labels.to(tokens_hat.device)
    val_idx = val_idx.to(tokens_hat.device)
    scores: dict[tuple[float, float], float] = {}
    for lr in lr_grid:
        for wd in wd_grid:
            model = train_attentive(tokens_hat, labels, fit_idx, num_classes, num_heads, lr, wd, epochs,
                                    batch_size, seed)
            preds = predict_attentive(model, tokens_hat[val_idx])
            scores[(float(lr), float(wd))] = (preds == labels[val_idx]).float().mean().item()
    (best_lr, best_wd), best = max(scores.items(), key=lambda kv: kv[1])  # max keeps the first of equals
    refit_idx = torch.cat([fit_idx.to(tokens_hat.device), val_idx])
    model = train_attentive(tokens_hat, labels, refit_idx, num_classes, num_heads, best_lr, best_wd, epochs,
                            batch_size, seed)
    return AttentiveSelection(model, best_lr, best_wd, best,
                              {f"lr={lr:g},wd={wd:g}": acc for (lr, wd), acc in scores.items()})


__all__ = [
    "AttentiveClassifier",
    "AttentivePooler",
    "AttentiveSelection",
    "normalize_tokens",
    "predict_attentive",
    "select_and_train",
    "train_attentive",
]
