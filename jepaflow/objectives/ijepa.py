"""I-JEPA: predict the target encoder's representations of several target blocks from one context block.

Assran et al., "Self-Supervised Learning from Images with a Joint-Embedding Predictive Architecture", CVPR 2023
(arXiv 2301.08243), sec. 3; reference code facebookresearch/ijepa ``src/train.py`` (forward_target,
forward_context, loss_fn).

Per batch (shapes for B images, N patches, M target blocks of K_tgt patches, a context of K_ctx patches)::

    h = LayerNorm(target_encoder(images))          (B, N, D)     no grad; parameter-free layer norm
    y = h[targets]                                 (B, M, K_tgt, D)
    z = encoder(images, keep=context)              (B, K_ctx, D)
    p = predictor(z, context, targets)             (B, M, K_tgt, D)
    loss = smooth_l1(p, y)   (official code)   or   (1/M) sum_m sum_j ||p - y||^2   (paper, eq. 1)

The target encoder is a copy of the encoder updated only by the TargetUpdater (EMA).

Optional, off by default (``sigreg_weight: 0``), and not part of I-JEPA as published: an anti-collapse term on the
context embeddings, LeJEPA's SIGReg (Balestriero & LeCun 2025, arXiv 2511.08544; ``jepaflow.layers.sigreg``)::

    loss = loss + sigreg_weight * SIGReg(mean_k z[:, k])      the pooled context features, (B, D)

It pushes the pooled context features of a batch towards an isotropic Gaussian, which forbids the dimensional
collapse that small-scale I-JEPA runs show (docs/results/small_scale_ijepa.md measures its effect).

Optional, off by default (``target_norm: layer``), also not in the paper: ``target_norm: layer_batch`` follows
the layer norm with a standardization of every (position, feature) over the batch
(:func:`standardize_over_batch`)::

    h = (h - mean_b h[b]) / std_b h[b]          per position n and feature d, over the B images

A target token is the sum of a part that its position alone predicts (the same for every image) and a part that
depends on the image. With small patches the first dominates (docs/results/small_scale_ijepa.md: 72% of the
target's token variance after 2 epochs on Fashion-MNIST), and the predictor, which is told the target positions,
gets it for free. Standardizing over the batch removes it and weighs every feature's image-dependent part equally.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from jepaflow.interfaces import Batch, Encoder, Objective, ObjectiveOutput, PluginConfig, Predictor
from jepaflow.layers.distributed import world_size
from jepaflow.layers.masking import gather_tokens
from jepaflow.layers.monitors import feature_std
from jepaflow.layers.sigreg import SIGReg
from jepaflow.layers.target import TargetNetworksMixin, frozen_copy


def ijepa_loss(pred: Tensor, target: Tensor, valid: Tensor | None, kind: str, beta: float = 1.0) -> Tensor:
    """I-JEPA regression loss between predictions and targets.

    Args:
        pred, target: ``(B, M, K, D)``.
        valid: ``(B, M, K)`` bool (False for padded target entries) or None.
        kind: ``"smooth_l1"``: mean smooth-L1 over every valid element (official code, ``F.smooth_l1_loss``,
            beta 1); ``"l2"``: the paper's eq. (1), squared L2 distance summed over the patches of a block and
            averaged over the M blocks (and the batch).
    """
    if kind == "smooth_l1":
        per_elem = F.smooth_l1_loss(pred, target, reduction="none", beta=beta)  # (B, M, K, D)
        if valid is None:
            return per_elem.mean()
        w = valid.unsqueeze(-1).to(per_elem.dtype)
        return (per_elem * w).sum() / (w.sum() * pred.shape[-1]).clamp_min(1.0)
    if kind == "l2":
        per_patch = (pred - target).pow(2).sum(-1)  # (B, M, K)
        if valid is not None:
            per_patch = per_patch * valid.to(per_patch.dtype)
        return per_patch.sum(-1).mean()  # sum over the block, mean over blocks and batch
    raise ValueError(f"unknown I-JEPA loss {kind!r}")


def _sum_over_ranks(x: Tensor) -> Tensor:
    """``x`` summed over every process (itself on one process)."""
    if world_size() > 1:
        import torch.distributed as dist

        dist.all_reduce(x)
    return x


def standardize_over_batch(h: Tensor, eps: float = 1e-5) -> Tensor:
    """Standardize every (position, feature) of ``h`` ``(B, N, D)`` over the batch (all ranks' when distributed).

    ``(h - mean_b h) / sqrt(var_b h + eps)``, the statistics taken per position ``n`` and feature ``d`` over the
    ``B`` images (and over every process's images under ``torch.distributed``: two all-reduces of ``(N, D)``).
    What the batch shares at a position -- the part of a token that the position alone predicts -- is removed,
    and every feature's image-to-image variation is brought to unit variance.
    """
    # two passes (mean, then the centred second moment): one pass, E[h^2] - E[h]^2, loses the small variance of a
    # feature whose position part is large to float32 cancellation
    count = h.shape[0] * world_size()  # every rank has the same batch (drop-last)
    mean = _sum_over_ranks(h.sum(0)) / count  # (N, D)
    var = _sum_over_ranks((h - mean).square().sum(0)) / count
    return (h - mean) * torch.rsqrt(var + eps)


def position_residuals(tokens: Tensor, idx: Tensor, num_positions: int, valid: Tensor | None = None) -> Tensor:
    """Tokens minus the batch mean of the tokens at the same grid position: the image-dependent part.

    Args:
        tokens: ``(B, K, D)`` tokens at the positions ``idx`` ``(B, K)`` of a grid of ``num_positions``.
        valid: ``(B, K)`` bool, False for padding (left out of the means), or None.
    Returns:
        ``(B, K, D)``: ``tokens[b, k] - mean{tokens[b', k'] : idx[b', k'] == idx[b, k], valid}``.
    """
    B, K, D = tokens.shape
    w = tokens.new_ones(B, K) if valid is None else valid.to(tokens.dtype)
    flat = idx.reshape(-1)
    sums = tokens.new_zeros(num_positions, D).index_add_(0, flat, (tokens * w.unsqueeze(-1)).reshape(-1, D))
    counts = tokens.new_zeros(num_positions).index_add_(0, flat, w.reshape(-1))
    mean = sums / counts.clamp_min(1.0).unsqueeze(-1)  # (N, D)
    return tokens - mean[idx]


def masked_mean(tokens: Tensor, valid: Tensor | None) -> Tensor:
    """Mean over the valid tokens: ``(B, K, D)``, ``(B, K)`` bool or None -> ``(B, D)``."""
    if valid is None:
        return tokens.mean(1)
    w = valid.unsqueeze(-1).to(tokens.dtype)
    return (tokens * w).sum(1) / w.sum(1).clamp_min(1.0)


class IJEPAObjective(TargetNetworksMixin, Objective):
    """I-JEPA (Assran et al. 2023): context encoder + predictor regress the EMA target encoder's normalized
    patch representations of the target blocks. Default loss: smooth-L1 as in the official code."""

    class Config(PluginConfig):
        loss: Literal["smooth_l1", "l2"] = Field(
            "smooth_l1", description="smooth_l1: official code (default); l2: the paper's eq. (1)"
        )
        smooth_l1_beta: float = Field(1.0, gt=0, le=1e4, description="smooth-L1 transition point (official: 1.0)")
        sigreg_weight: float = Field(
            0.0, ge=0, le=1e4,
            description="weight of LeJEPA's SIGReg on the pooled context features, added to the loss; 0: off "
            "(I-JEPA as published). Not in the paper: an anti-collapse option for small-scale runs",
        )
        sigreg_slices: int = Field(256, ge=1, le=65536, description="random 1-D directions per step for the SIGReg term")
        sigreg_on: Literal["pooled", "tokens"] = Field(
            "pooled",
            description="what the SIGReg term reads: pooled: each image's mean context token (B samples); tokens: "
            "every context token minus the batch mean at its position (B x K_ctx samples, per process)",
        )
        target_norm: Literal["layer", "layer_batch"] = Field(
            "layer",
            description="layer: parameter-free layer norm of the target tokens (official); layer_batch: then "
            "standardize every (position, feature) over the batch, so the targets hold no position-only part "
            "(not in the paper: an option for small-scale runs)",
        )

    requires: ClassVar[frozenset[str]] = frozenset({"encoder", "predictor", "masker", "target_updater"})
    needs: ClassVar[frozenset[str]] = frozenset({"drop_patches"})

    def __init__(self, config: Config, *, encoder: Encoder, predictor: Predictor):
        super().__init__()
        self.config = config
        self.encoder = encoder
        self.predictor = predictor
        # The target starts as an exact copy (official: copy.deepcopy(encoder)), never receives gradients and
        # always runs in eval mode (TargetNetworksMixin): no stochastic depth or dropout in the targets.
        self.target_encoder = frozen_copy(encoder)
        # Only built when used, so that the default objective's state dict stays what it always was.
        # tokens: each process tests its own B x K_ctx tokens (thousands of samples; no cross-rank gather)
        self.sigreg = (SIGReg(config.sigreg_slices, gather=config.sigreg_on == "pooled")
                       if config.sigreg_weight > 0 else None)

    def forward(self, batch: Batch) -> ObjectiveOutput:
        masks = batch.masks
        if masks is None:
            raise ValueError("I-JEPA needs masks: the recipe must have a masker")
        with torch.no_grad():
            h = self.target_encoder(batch.images)  # (B, N, D)
            h = F.layer_norm(h, (h.shape[-1],))  # parameter-free normalization over the feature dim
            if self.config.target_norm == "layer_batch":
                h = standardize_over_batch(h.float())
            y = gather_tokens(h, masks.targets)  # (B, M, K_tgt, D)
        z = self.encoder(batch.images, masks.context, masks.context_valid)  # (B, K_ctx, D)
        p = self.predictor(z, masks.context, masks.targets, masks.context_valid, masks.targets_valid)
        loss = ijepa_loss(p.float(), y.float(), masks.targets_valid, self.config.loss, self.config.smooth_l1_beta)
        zf = masked_mean(z.float(), masks.context_valid)  # (B, D) pooled context features
        metrics = {}
        if self.sigreg is not None:
            if self.config.sigreg_on == "pooled":
                reg = self.sigreg(zf)
            else:
                num_positions = int(h.shape[1])
                r = position_residuals(z.float(), masks.context, num_positions, masks.context_valid)
                w = None if masks.context_valid is None else masks.context_valid.reshape(-1)
                reg = self.sigreg(r.reshape(-1, r.shape[-1]), sample_weight=w)
            metrics["pred_loss"] = loss.detach()
            metrics["sigreg"] = reg.detach()
            loss = loss + self.config.sigreg_weight * reg
        with torch.no_grad():
            metrics["ctx_feat_std"] = feature_std(zf)  # docs/monitors.md
        return ObjectiveOutput(loss=loss, metrics=metrics)

    def target_pairs(self):
        return [(self.encoder, self.target_encoder)]

    def encoders(self) -> dict[str, Encoder]:
        return {"context": self.encoder, "target": self.target_encoder}

    def representation_encoder(self) -> Encoder:
        # The I-JEPA paper evaluates the target encoder (sec. 5; official eval code loads 'target_encoder').
        return self.target_encoder
