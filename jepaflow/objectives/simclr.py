"""SimCLR: contrastive learning between two augmented views with the NT-Xent (normalized temperature-scaled
cross-entropy) loss.

Chen, Kornblith, Norouzi, Hinton, "A Simple Framework for Contrastive Learning of Visual Representations",
ICML 2020 (arXiv 2002.05709), sec. 2.1 (eq. 1) and Algorithm 1; reference code google-research/simclr
(``objective.py:add_contrastive_loss``, ``model_util.py:projection_head``).

Per batch of B images, each augmented into two views (the ``views`` recipe section)::

    h = pool(encoder(cat(view1, view2)))           (2B, D_enc)   both views in one pass, as the official code
    z = projector(h)                               (2B, K)       BatchNorm statistics over both views
    z1, z2 = split(z)                              (B, K) each
    loss = nt_xent(z1, z2, T)                      eq. 1, mean over the 2B anchors

With ``gather_negatives`` and several processes, every rank's projections are gathered (with gradients) and each
local anchor is contrasted against all ``2 * world * B`` samples except itself, as the official code does across
TPU cores; the local loss is the mean over the rank's own 2B anchors, so the average over ranks (DDP's gradient
mean) is the full-batch loss.

Paper vs code: the paper's eq. (1) loss is ``1/(2N) sum_k [l(2k-1, 2k) + l(2k, 2k-1)]``, a mean over the 2N
anchors; the official TF code returns ``loss_a + loss_b`` (two means over N anchors), twice as large. We implement
the paper's mean (under LARS the factor of 2 is absorbed by the trust ratio apart from the weight-decay balance;
under AdamW it is absorbed entirely).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from jepaflow.fields import Temperature
from jepaflow.interfaces import Batch, Encoder, Head, Objective, ObjectiveOutput, PluginConfig
from jepaflow.layers.distributed import all_gather_with_grad, rank, world_size
from jepaflow.layers.monitors import feature_std


def nt_xent_logits(
    z1: Tensor,
    z2: Tensor,
    temperature: float,
    z1_all: Tensor | None = None,
    z2_all: Tensor | None = None,
    offset: int = 0,
) -> tuple[Tensor, Tensor]:
    """Logits and positive indices of the NT-Xent loss (SimCLR eq. 1).

    Args:
        z1, z2: ``(B, K)`` local projections of view 1 and view 2 of the same B images (row i of each is image i).
        temperature: ``T > 0``; cosine similarities are divided by it.
        z1_all, z2_all: ``(N', K)`` projections of every rank (the local rows included at ``offset``), or None
            for a single process (then ``N' = B`` and ``offset = 0``).
        offset: index of the local rows in ``z*_all`` (``rank * B`` for an all-gather of equal batches).
    Returns:
        logits: ``(2B, 2N')``: anchors ``[z1; z2]`` against candidates ``[z1_all; z2_all]``, cosine / T, with each
            anchor's own entry set to ``-inf`` (the ``k != i`` of eq. 1).
        positives: ``(2B,)`` int64 column of each anchor's other view.
    """
    if (z1_all is None) != (z2_all is None):
        raise ValueError("pass both z1_all and z2_all, or neither")
    if z1_all is None:
        z1_all, z2_all, offset = z1, z2, 0
    b, n = z1.shape[0], z1_all.shape[0]
    if not 0 <= offset <= n - b:
        raise ValueError(f"offset {offset} does not place {b} local rows inside {n} gathered rows")
    anchors = F.normalize(torch.cat([z1, z2]), dim=-1)  # (2B, K)
    candidates = F.normalize(torch.cat([z1_all, z2_all]), dim=-1)  # (2N', K)
    logits = anchors @ candidates.T / temperature  # (2B, 2N')
    local = torch.arange(b, device=z1.device) + offset  # rows of the local images in z*_all
    self_idx = torch.cat([local, local + n])  # (2B,) each anchor's own column
    positives = torch.cat([local + n, local])  # view 1's positive is its view 2, and vice versa
    is_self = torch.arange(2 * n, device=z1.device) == self_idx[:, None]  # (2B, 2N') bool, no int64 one-hot
    return logits.masked_fill(is_self, float("-inf")), positives


def nt_xent(
    z1: Tensor,
    z2: Tensor,
    temperature: float,
    z1_all: Tensor | None = None,
    z2_all: Tensor | None = None,
    offset: int = 0,
) -> Tensor:
    """NT-Xent loss of SimCLR (Chen et al. 2020, eq. 1), averaged over the 2B local anchors.

    For anchor i with positive j (the other view of the same image) and ``sim`` the cosine similarity::

        l(i, j) = -log( exp(sim(z_i, z_j) / T) / sum_{k != i} exp(sim(z_i, z_k) / T) )

    where k runs over all 2N' samples (both views of every image of every rank). Arguments as
    :func:`nt_xent_logits`; returns a scalar. Computing it once with the full batch equals the mean over ranks of
    the per-rank losses with gathered ``z*_all`` and ``offset = rank * B``.
    """
    logits, positives = nt_xent_logits(z1, z2, temperature, z1_all, z2_all, offset)
    return F.cross_entropy(logits, positives)


class SimCLRObjective(Objective):
    """SimCLR (Chen et al. 2020): the NT-Xent loss between the projections of two augmented views of each image,
    every other sample of the (gathered) batch acting as a negative. No target network, no predictor."""

    class Config(PluginConfig):
        temperature: Temperature = Field(
            0.1,
            description="softmax temperature T of eq. 1; 0.1 is the paper's ImageNet setting with batch 4096 "
            "(sec. 5.1, Table 5; google-research/simclr default), 0.5 its CIFAR-10 choice (appendix B.9)",
        )
        gather_negatives: bool = Field(
            True,
            description="with several processes, contrast against every rank's samples (official code: "
            "cross-replica concat), else only against the local batch",
        )

    requires: ClassVar[frozenset[str]] = frozenset({"encoder", "projector", "views"})

    def __init__(self, config: Config, *, encoder: Encoder, projector: Head):
        super().__init__()
        self.config = config
        self.encoder = encoder
        self.projector = projector

    def project(self, views: list[Tensor]) -> tuple[Tensor, Tensor]:
        """``(B, K)`` projections of the two views. Same-size views go through one pass of 2B images, so that the
        projector's BatchNorm sees both views together as in the official code (which concatenates the views
        along the batch)."""
        x1, x2 = views
        if x1.shape == x2.shape:
            z = self.projector(self.encoder.pool(self.encoder(torch.cat([x1, x2]))))  # (2B, K)
            return z.chunk(2)
        return tuple(self.projector(self.encoder.pool(self.encoder(x))) for x in (x1, x2))

    def forward(self, batch: Batch) -> ObjectiveOutput:
        if batch.views is None or len(batch.views) != 2:
            raise ValueError("SimCLR needs exactly two views per image: the recipe's views section must make 2")
        z1, z2 = self.project(batch.views)
        # The loss in fp32, outside autocast: bf16 cosines / 0.1 would lose the small logit differences.
        with torch.autocast(z1.device.type, enabled=False):
            z1, z2 = z1.float(), z2.float()
            z1_all = z2_all = None
            offset = 0
            if self.config.gather_negatives and world_size() > 1:
                z1_all, z2_all = all_gather_with_grad(z1), all_gather_with_grad(z2)
                offset = rank() * z1.shape[0]
            logits, positives = nt_xent_logits(z1, z2, self.config.temperature, z1_all, z2_all, offset)
            loss = F.cross_entropy(logits, positives)
        with torch.no_grad():
            metrics = {  # names as in docs/monitors.md
                "pos_cosine": F.cosine_similarity(z1.detach(), z2.detach(), dim=-1).mean(),
                # fraction of anchors whose most similar other sample is their positive (official "contrast_acc")
                "contrast_acc": (logits.detach().argmax(-1) == positives).float().mean(),
                "proj_std_norm": feature_std(torch.stack([z1, z2]), normalize=True),
            }
        return ObjectiveOutput(loss=loss, metrics=metrics)

    def encoders(self) -> dict[str, Encoder]:
        return {"encoder": self.encoder}

    def representation_encoder(self) -> Encoder:
        # SimCLR evaluates the encoder's output h, before the projection head (sec. 2.1 and 4.2).
        return self.encoder
