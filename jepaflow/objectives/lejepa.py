"""LeJEPA: multi-view prediction in embedding space, kept from collapsing by SIGReg alone.

Balestriero & LeCun, "LeJEPA: Provable and Scalable Self-Supervised Learning Without the Heuristics" (arXiv
2511.08544), sec. 5.1 (eqs. 5-7 and eq. LeJEPA), Algorithms 1-2; reference code rbalestr-lab/lejepa
(``MINIMAL.md``, ``lejepa/``).

Per batch of B images, each augmented into V = V_g + V_l views (the first V_g "global", the rest "local",
DINO's multi-crop; sec. 5.1)::

    h_v = pool(encoder(view_v))                 (B, D_enc)   one encoder pass per view resolution
    z   = projector(h)                          (V, B, K)    one shared projector (BatchNorm over all views)
    mu  = mean_{v <= V_g} z_v                   (B, K)       centre of the global views, no stop-gradient
    pred   = mean_{v, n, k} (mu_nk - z_vnk)^2                every view predicts the global centre (Alg. 2)
    sigreg = (1/V) sum_v SIGReg(z_v)                         per view, same random directions (Alg. 1-2)
    loss   = (1 - lambda) * pred + lambda * sigreg           eq. LeJEPA, lambda = 0.05 (sec. 6.1)

There is no target network, no EMA, no stop-gradient and no predictor network (sec. 5.1, Table 4: "we
recommend training without a predictor"); the prediction is the identity map onto the global views' centre.

Paper vs code, and what we implement:

* Prediction term. Eq. (5) writes it pairwise, ``(1/V_g) sum_{v<=V_g} (1/V) sum_{v'} ||z_v - z_v'||^2``, and
  eqs. (6)-(7) rewrite it with the centre ``mu``; the two differ by the spread of the global views around
  ``mu`` (same minimiser). Algorithm 2 and the official code use the centre form (7), as we do.
* Reduction over the K projector dimensions. Eq. (7) uses the squared L2 norm (a sum over K); Algorithm 2 and
  the official code take ``.square().mean()``, i.e. also divide by K. The recommended ``lambda = 0.05`` was
  tuned with the latter, so ``pred_reduction: mean`` (Algorithm 2) is the default; ``sum`` gives eq. (7) as
  typeset (K times larger, which shifts the effective trade-off).
* SIGReg quadrature. The paper: 17 knots on [-5, 5] and 1024 slices (sec. 6.1), window exp(-t^2/2) (Algorithm
  1). The official ``EppsPulley`` class defaults to [0, 3] with 17 knots, and the minimal example to 256
  slices.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor

from jepaflow.fields import Count
from jepaflow.interfaces import Batch, Encoder, Head, Objective, ObjectiveOutput, PluginConfig
from jepaflow.layers.monitors import feature_std
from jepaflow.layers.sigreg import SIGReg


def lejepa_prediction_loss(z: Tensor, num_global: int, reduction: str = "mean") -> Tensor:
    """LeJEPA prediction term: every view's embedding regresses the mean of the global views' embeddings.

    Args:
        z: ``(V, B, K)`` projected embeddings, views first; ``z[:num_global]`` are the global views.
        num_global: ``V_g >= 1``.
        reduction: ``"mean"``: Algorithm 2, ``mean_{v,n,k} (mu_nk - z_vnk)^2``; ``"sum"``: eq. (7),
            ``(1/B) sum_n (1/V) sum_v ||mu_n - z_vn||_2^2`` (= K x the mean).
    Returns:
        scalar. Gradients flow into the centre as well (no stop-gradient, sec. 5.1).
    """
    if not 1 <= num_global <= z.shape[0]:
        raise ValueError(f"num_global must be in [1, {z.shape[0]}], got {num_global}")
    centre = z[:num_global].mean(0)  # (B, K)
    sq = (centre - z).square()  # (V, B, K), the centre broadcast over views
    if reduction == "mean":
        return sq.mean()
    if reduction == "sum":
        return sq.sum(-1).mean()
    raise ValueError(f"unknown reduction {reduction!r}")


def lejepa_loss(pred: Tensor, sigreg_per_view: Tensor, lamb: float) -> Tensor:
    """Eq. LeJEPA: ``(1 - lambda) * pred + lambda * (1/V) sum_v SIGReg_v``; ``sigreg_per_view``: ``(V,)``."""
    return (1.0 - lamb) * pred + lamb * sigreg_per_view.mean()


def embed_views(views: list[Tensor], encoder: Encoder, projector: Head) -> tuple[Tensor, Tensor]:
    """Pooled encoder features and projections of every view.

    Views of the same size are encoded in one batched pass (a run of consecutive equal shapes: the global
    views, then the local ones); the projector then sees all views at once, so its BatchNorm statistics cover
    every view (as in the official minimal example).

    Args:
        views: ``V`` tensors ``(B, C, H_v, W_v)``.
    Returns:
        features ``(V, B, D_enc)`` and projections ``(V, B, K)``.
    """
    batch = views[0].shape[0]
    features: list[Tensor] = []
    start = 0
    while start < len(views):
        end = start + 1
        while end < len(views) and views[end].shape == views[start].shape:
            end += 1
        group = torch.cat(views[start:end]) if end - start > 1 else views[start]
        features.append(encoder.pool(encoder(group)))  # ((end - start) * B, D_enc), views stacked in order
        start = end
    h = torch.cat(features)  # (V * B, D_enc)
    z = projector(h)  # (V * B, K)
    return h.view(len(views), batch, -1), z.view(len(views), batch, -1)


class LeJEPAObjective(Objective):
    """LeJEPA (Balestriero & LeCun 2025): all views predict the centre of the global views' projections;
    SIGReg (Epps-Pulley on random 1-D projections) keeps the projections isotropic Gaussian. No EMA, no
    stop-gradient, no predictor."""

    class Config(PluginConfig):
        lamb: float = Field(
            0.05, ge=0, le=1,
            description="lambda: loss = (1-lambda)*pred + lambda*SIGReg; paper's default 0.05 (sec. 6.1)",
        )
        num_global_views: int = Field(
            2, ge=1, le=64,
            description="the first V_g views are global; their mean is the prediction target (paper: 2)",
        )
        num_slices: Count = Field(
            1024,
            description="random 1-D directions per step for SIGReg (paper sec. 6.1: 1024; Algorithm 1: 256)",
        )
        t_max: float = Field(5.0, gt=0, le=1e3, description="Epps-Pulley integration range [-t_max, t_max] (paper 5)")
        num_points: int = Field(17, ge=2, le=65536, description="trapezoid knots on [-t_max, t_max] (paper: 17)")
        pred_reduction: Literal["mean", "sum"] = Field(
            "mean",
            description="mean: Algorithm 2 and official code (mean over projector dims); sum: eq. (7), the "
            "squared L2 norm",
        )

    requires: ClassVar[frozenset[str]] = frozenset({"encoder", "projector", "views"})

    def __init__(self, config: Config, *, encoder: Encoder, projector: Head):
        super().__init__()
        self.config = config
        self.encoder = encoder
        self.projector = projector
        self.sigreg = SIGReg(config.num_slices, config.t_max, config.num_points)

    def forward(self, batch: Batch) -> ObjectiveOutput:
        views = batch.views
        vg = self.config.num_global_views
        if views is None:
            raise ValueError(
                "LeJEPA needs augmented views: add a views section to the recipe (e.g. multicrop)"
            )
        if len(views) < vg or any(v.shape != views[0].shape for v in views[:vg]):
            raise ValueError(
                f"LeJEPA needs at least {vg} global views of one size first, got view shapes "
                f"{[tuple(v.shape[-2:]) for v in views]}"
            )
        h, z = embed_views(views, self.encoder, self.projector)  # (V, B, D_enc), (V, B, K)
        zf = z.float()
        pred = lejepa_prediction_loss(zf, vg, self.config.pred_reduction)
        sig = self.sigreg(zf)  # (V,)
        loss = lejepa_loss(pred, sig, self.config.lamb)
        with torch.no_grad():
            # Collapse monitors of the global views (docs/monitors.md). SIGReg pushes the projections towards
            # N(0, I), so proj_std should approach 1; feat_std follows the encoder.
            metrics = {
                "pred": pred.detach(),
                "sigreg": sig.detach().mean(),
                "proj_std": feature_std(zf[:vg]),
                "feat_std": feature_std(h[:vg]),
            }
        return ObjectiveOutput(loss=loss, metrics=metrics)

    def encoders(self) -> dict[str, Encoder]:
        return {"context": self.encoder}

    def representation_encoder(self) -> Encoder:
        # LeJEPA evaluates the backbone's (pooled) features, not the projector's (sec. 6, linear probe).
        return self.encoder
