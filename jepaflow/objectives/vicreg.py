"""VICReg: Variance-Invariance-Covariance regularization of the embeddings of two augmented views.

Bardes, Ponce, LeCun, "VICReg: Variance-Invariance-Covariance Regularization for Self-Supervised Learning",
ICLR 2022 (arXiv 2105.04906), sec. 3 (eqs. 1-6) and Algorithm 1; reference code facebookresearch/vicreg
(``main_vicreg.py``: ``VICReg.forward``, ``Projector``, ``off_diagonal``, ``FullGatherLayer``).

Per batch of B images, each augmented into two views (the ``views`` recipe section)::

    z1 = expander(pool(encoder(view1)))            (B, K)        one pass per view, as the official code
    z2 = expander(pool(encoder(view2)))            (B, K)        (its BatchNorm statistics are per view)
    s  = mean_{b,k} (z1 - z2)^2                                  invariance, eq. 5 (/K as F.mse_loss); local batch
    v  = (v(z1_all) + v(z2_all)) / 2                             variance, eq. 1, on the gathered batch
    c  = c(z1_all) + c(z2_all)                                   covariance, eqs. 3-4, on the gathered batch
    loss = lambda * s + mu * v + nu * c                          eq. 6, lambda = mu = 25, nu = 1

with ``v(z) = mean_j relu(gamma - sqrt(Var(z_.j) + eps))`` (unbiased variance over the batch) and
``c(z) = (1/K) sum_{i != j} C(z)_ij^2``, ``C(z)`` the covariance matrix ``(z - mean)^T (z - mean) / (N - 1)``.

Paper vs code: eq. (6) adds ``v(Z) + v(Z')`` and ``c(Z) + c(Z')``; the official code halves the variance sum (its
``std_loss``) but not the covariance sum, and computes the variance and covariance terms on embeddings gathered
from every GPU (with gradients) while the invariance term uses the local batch. We follow the code, whose
coefficients (25, 25, 1) are the published ones.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from jepaflow.fields import Epsilon, LossWeight
from jepaflow.interfaces import Batch, Encoder, Head, Objective, ObjectiveOutput, PluginConfig
from jepaflow.layers.distributed import all_gather_with_grad, world_size
from jepaflow.layers.monitors import feature_std


def invariance_loss(z1: Tensor, z2: Tensor) -> Tensor:
    """Invariance term ``s`` (VICReg eq. 5, averaged over dimensions as the official ``F.mse_loss``):
    ``mean_{b,k} (z1 - z2)^2``. ``z1, z2``: ``(B, K)``; returns a scalar."""
    return F.mse_loss(z1, z2)


def variance_loss(z: Tensor, gamma: float = 1.0, eps: float = 1e-4) -> Tensor:
    """Variance term of one branch (VICReg eqs. 1-2): a hinge on the per-dimension standard deviation,
    ``mean_j relu(gamma - sqrt(Var(z_.j) + eps))``, Var the unbiased variance over the batch (``torch.var``, as the
    official code). ``z``: ``(N, K)`` with ``N >= 2``; returns a scalar, 0 when every std is at least ``gamma``."""
    std = torch.sqrt(z.var(dim=0) + eps)  # (K,)
    return F.relu(gamma - std).mean()


def off_diagonal(m: Tensor) -> Tensor:
    """The ``K * (K - 1)`` off-diagonal entries of a square ``(K, K)`` matrix, as a flat view (no copy of the
    matrix, no ``(K, K)`` mask): dropping the last element, the rest reshaped to ``(K - 1, K + 1)`` has the diagonal
    entries in its first column."""
    k = m.shape[0]
    if m.shape != (k, k):
        raise ValueError(f"off_diagonal needs a square matrix, got {tuple(m.shape)}")
    return m.flatten()[:-1].view(k - 1, k + 1)[:, 1:].flatten()


def covariance_matrix(z: Tensor) -> Tensor:
    """Sample covariance ``(z - mean)^T (z - mean) / (N - 1)`` of ``z`` ``(N, K)``: ``(K, K)`` (VICReg eq. 3)."""
    zc = z - z.mean(dim=0)
    return zc.T @ zc / (z.shape[0] - 1)


def covariance_loss(z: Tensor) -> Tensor:
    """Covariance term of one branch (VICReg eq. 4): ``(1/K) sum_{i != j} C(z)_ij^2``. ``z``: ``(N, K)``, ``N >= 2``;
    returns a scalar, 0 when the dimensions are uncorrelated over the batch."""
    return off_diagonal(covariance_matrix(z)).pow(2).sum() / z.shape[1]


def vicreg_loss(
    z1: Tensor,
    z2: Tensor,
    sim_coeff: float = 25.0,
    std_coeff: float = 25.0,
    cov_coeff: float = 1.0,
    gamma: float = 1.0,
    eps: float = 1e-4,
    z1_all: Tensor | None = None,
    z2_all: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The VICReg loss (eq. 6, reductions of the official ``VICReg.forward``).

    Args:
        z1, z2: ``(B, K)`` local embeddings of the two views (row i of each is image i): the invariance term.
        sim_coeff, std_coeff, cov_coeff: lambda, mu, nu.
        gamma, eps: target std and the variance's numerical floor.
        z1_all, z2_all: ``(N, K)`` embeddings gathered from every process, for the variance and covariance terms;
            None uses the local ones.
    Returns:
        ``(loss, terms)``: the weighted total and the unweighted ``invariance``, ``variance`` (the mean of the two
        branches) and ``covariance`` (the sum of the two branches), so that
        ``loss = sim_coeff * invariance + std_coeff * variance + cov_coeff * covariance``.
    """
    if (z1_all is None) != (z2_all is None):
        raise ValueError("pass both z1_all and z2_all, or neither")
    if z1_all is None:
        z1_all, z2_all = z1, z2
    inv = invariance_loss(z1, z2)
    var = (variance_loss(z1_all, gamma, eps) + variance_loss(z2_all, gamma, eps)) / 2
    cov = covariance_loss(z1_all) + covariance_loss(z2_all)
    loss = sim_coeff * inv + std_coeff * var + cov_coeff * cov
    return loss, {"invariance": inv, "variance": var, "covariance": cov}


class VICRegObjective(Objective):
    """VICReg (Bardes et al. 2022): the embeddings of two views of an image are pulled together (invariance) while
    each embedding dimension is kept spread (variance hinge) and decorrelated from the others (covariance); no
    negatives, no target network, no stop-gradient. The ``projector`` section is the paper's expander."""

    class Config(PluginConfig):
        sim_coeff: LossWeight = Field(
            25.0, description="lambda, weight of the invariance term (paper sec. 4.1; official --sim-coeff)"
        )
        std_coeff: LossWeight = Field(
            25.0, description="mu, weight of the variance term (paper sec. 4.1; official --std-coeff)"
        )
        cov_coeff: LossWeight = Field(
            1.0, description="nu, weight of the covariance term (paper sec. 4.1; official --cov-coeff)"
        )
        gamma: float = Field(1.0, gt=0, le=1e3, description="target standard deviation of each dimension (paper eq. 1)")
        eps: Epsilon = Field(1e-4, description="added to the variance before the square root (official 0.0001)")
        gather: bool = Field(
            True,
            description="with several processes, compute the variance and covariance terms on the embeddings of "
            "every rank (official FullGatherLayer), else on the local batch",
        )

    requires: ClassVar[frozenset[str]] = frozenset({"encoder", "projector", "views"})

    def __init__(self, config: Config, *, encoder: Encoder, projector: Head):
        super().__init__()
        self.config = config
        self.encoder = encoder
        self.projector = projector

    def embed(self, x: Tensor) -> Tensor:
        """``(B, K)`` expander outputs of one view ``(B, C, H, W)``."""
        return self.projector(self.encoder.pool(self.encoder(x)))

    def forward(self, batch: Batch) -> ObjectiveOutput:
        if batch.views is None or len(batch.views) != 2:
            raise ValueError("VICReg needs exactly two views per image: the recipe's views section must make 2")
        # One pass per view: the expander's BatchNorm normalizes each view on its own, as the official code.
        z1, z2 = self.embed(batch.views[0]), self.embed(batch.views[1])
        c = self.config
        # fp32 outside autocast: the covariance matmul and the sqrt of small variances need the precision.
        with torch.autocast(z1.device.type, enabled=False):
            z1, z2 = z1.float(), z2.float()
            z1_all = z2_all = None
            if c.gather and world_size() > 1:
                z1_all, z2_all = all_gather_with_grad(z1), all_gather_with_grad(z2)
            loss, terms = vicreg_loss(z1, z2, c.sim_coeff, c.std_coeff, c.cov_coeff, c.gamma, c.eps, z1_all, z2_all)
        with torch.no_grad():
            metrics = {k: v.detach() for k, v in terms.items()}
            # the variance term pushes it up to gamma; near 0 means collapse (docs/monitors.md)
            metrics["proj_std"] = feature_std(torch.stack([z1, z2]))
        return ObjectiveOutput(loss=loss, metrics=metrics)

    def encoders(self) -> dict[str, Encoder]:
        return {"encoder": self.encoder}

    def representation_encoder(self) -> Encoder:
        # VICReg evaluates the encoder's representation, before the expander (sec. 3.1 and 4).
        return self.encoder
