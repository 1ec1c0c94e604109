"""BYOL: an online network predicts an EMA target network's projection of another view of the same image.

Grill et al., "Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning", NeurIPS 2020 (arXiv
2006.07733), sec. 3.1-3.2 (eq. 2) and appendix J; reference code google-deepmind/deepmind-research
``byol/byol_experiment.py`` (``_forward``, ``loss_fn``, ``_update_fn``) and ``byol/utils/helpers.py:
regression_loss``.

Per batch of B images, each augmented into two views v1, v2 (the ``views`` recipe section)::

    online:  y_i = pool(encoder(v_i))      z_i = projector(y_i)          q_i = prediction_head(z_i)     (B, K)
    target:  z'_i = target_projector(pool(target_encoder(v_i)))          no gradient                     (B, K)
    loss = mean_b [ (2 - 2 cos(q_1, z'_2)) + (2 - 2 cos(q_2, z'_1)) ]    eq. 2 and its symmetrized twin L~

The target networks are copies of the encoder and projector that only the EMA TargetUpdater moves, with the
paper's cosine schedule ``tau = 1 - (1 - tau_base)(cos(pi k / K) + 1) / 2`` (``target_updater: {name: ema,
schedule: cosine, momentum_start: 0.996}``). The online encoder is the one evaluated (sec. 3.3).

Faithful to the official code: each view goes through the networks separately (BatchNorm statistics per view,
``apply_once_fn`` per view); the target network's BatchNorm layers use batch statistics too (its drop path and
dropout, which the official ResNet lacks, stay off). Differences: the target starts as an exact copy of the online
weights (the official code initialises it from another seed and notes no significant difference), and the online
linear classifier the official code trains on the side (with a stop gradient, for monitoring only) is left to the
engine's probes.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from jepaflow.interfaces import Batch, Encoder, Head, Objective, ObjectiveOutput, PluginConfig
from jepaflow.layers.monitors import feature_std
from jepaflow.layers.target import TargetNetworksMixin, frozen_copy


def byol_loss(p: Tensor, z: Tensor) -> Tensor:
    """BYOL's normalized regression loss (eq. 2), averaged over the batch.

    Args:
        p: ``(B, K)`` online predictions ``q_theta(z_theta)``.
        z: ``(B, K)`` target projections ``z'_xi`` (pass them detached: the target gets no gradient).
    Returns:
        scalar ``mean_b || p_b / ||p_b|| - z_b / ||z_b|| ||^2 = mean_b (2 - 2 cos(p_b, z_b))``, in ``[0, 4]``.
    """
    p_n = F.normalize(p, dim=-1)
    z_n = F.normalize(z, dim=-1)
    return (p_n - z_n).pow(2).sum(-1).mean()


def byol_symmetric_loss(p1: Tensor, p2: Tensor, z1: Tensor, z2: Tensor) -> Tensor:
    """``L + L~`` of sec. 3.2: each view's prediction regresses the other view's target projection.

    Args:
        p1, p2: ``(B, K)`` online predictions of view 1 and view 2.
        z1, z2: ``(B, K)`` target projections of view 1 and view 2 (detached).
    Returns:
        scalar ``byol_loss(p1, z2) + byol_loss(p2, z1)``, in ``[0, 8]``.
    """
    return byol_loss(p1, z2) + byol_loss(p2, z1)


class BYOLObjective(TargetNetworksMixin, Objective):
    """BYOL (Grill et al. 2020): online encoder + projector + predictor regress the EMA target network's projection
    of the other view, with the symmetrized normalized L2 loss. No negatives."""

    class Config(PluginConfig):
        symmetric: bool = Field(
            True,
            description="add the swapped term L~ (view 2 predicts view 1), as the paper (sec. 3.2, eq. 2: "
            "L_BYOL = L + L~) and the official loss_fn do; false keeps only v1 -> v2",
        )

    requires: ClassVar[frozenset[str]] = frozenset(
        {"encoder", "projector", "prediction_head", "views", "target_updater"}
    )
    #: the official target network normalizes with batch statistics (its BatchNorm in training mode); its other
    #: stochastic layers (drop path, dropout) stay off
    target_batch_stats: ClassVar[bool] = True

    def __init__(self, config: Config, *, encoder: Encoder, projector: Head, prediction_head: Head):
        super().__init__()
        self.config = config
        self.encoder = encoder
        self.projector = projector
        self.prediction_head = prediction_head
        # The target network xi: encoder + projector (no predictor: the asymmetry of sec. 3.1), moved only by EMA.
        self.target_encoder = frozen_copy(encoder)
        self.target_projector = frozen_copy(projector)

    def online(self, view: Tensor) -> tuple[Tensor, Tensor]:
        """``(z, q)``: ``(B, K)`` online projection and prediction of one view ``(B, C, H, W)``."""
        z = self.projector(self.encoder.pool(self.encoder(view)))
        return z, self.prediction_head(z)

    @torch.no_grad()
    def target(self, view: Tensor) -> Tensor:
        """``(B, K)`` target projection of one view (no gradient)."""
        return self.target_projector(self.target_encoder.pool(self.target_encoder(view)))

    def forward(self, batch: Batch) -> ObjectiveOutput:
        if batch.views is None or len(batch.views) != 2:
            raise ValueError("BYOL needs exactly two views per image: the recipe's views section must make 2")
        v1, v2 = batch.views
        # One view at a time, as the official code: BatchNorm statistics are per view.
        z1, q1 = self.online(v1)
        z2, q2 = self.online(v2)
        t1, t2 = self.target(v1), self.target(v2)
        # The loss in fp32: 2 - 2cos of near-aligned bf16 vectors would lose its small differences.
        with torch.autocast(q1.device.type, enabled=False):
            q1, q2, t1, t2 = q1.float(), q2.float(), t1.float(), t2.float()
            if self.config.symmetric:
                loss = byol_symmetric_loss(q1, q2, t1, t2)
            else:
                loss = byol_loss(q1, t2)
        with torch.no_grad():
            metrics = {  # names as in docs/monitors.md
                "pos_cosine": F.cosine_similarity(q1.detach(), t2, dim=-1).mean(),
                "proj_std_norm": feature_std(torch.stack([z1, z2]), normalize=True),  # online projections
            }
        return ObjectiveOutput(loss=loss, metrics=metrics)

    def target_pairs(self):
        return [(self.encoder, self.target_encoder), (self.projector, self.target_projector)]

    def encoders(self) -> dict[str, Encoder]:
        return {"online": self.encoder, "target": self.target_encoder}

    def representation_encoder(self) -> Encoder:
        # BYOL evaluates the online encoder's representation y (sec. 3.3: "we only keep the encoder f_theta").
        return self.encoder
