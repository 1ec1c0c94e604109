"""Label-free collapse monitors: pure functions of a batch of features, one meaning per metric name.

Every objective and the engine's monitor compute their spread and rank numbers here, so that a name in
``metrics.jsonl`` means the same thing whichever method wrote it (``docs/monitors.md`` lists every name).

* :func:`feature_std` -- per-dimension standard deviation over the batch, averaged over dimensions (and views):
  0 when every sample maps to the same point (complete collapse). With ``normalize=True`` the rows are first
  L2-normalized and the result multiplied by ``sqrt(D)``, the collapse monitor of SimSiam (Chen & He, "Exploring
  Simple Siamese Representation Learning", CVPR 2021, sec. 4.1): about 1 for features spread isotropically on the
  sphere, whatever their scale.
* :func:`rankme` -- the effective rank of Garrido et al., "RankMe: Assessing the Downstream Performance of
  Pretrained Self-Supervised Representations by Their Rank", ICML 2023 (arXiv 2210.02885), eq. 1: the exponential
  of the entropy of the L1-normalized singular values. 1 for features on a line (collapsed), ``k`` for ``k``
  equal singular values; at most ``min(N, D)``.
* :func:`masked_mean_pool`, :func:`token_std` -- the pooled context feature of the masked methods (I-JEPA, MAE)
  and the per-dimension spread of a set of tokens (data2vec's target/prediction monitors).

All functions are made for ``torch.no_grad`` use on detached tensors, compute in float32 and return 0-dim
tensors left on the input's device (so an objective's metrics need no host sync).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

#: RankMe's epsilon, added to each normalized singular value before the entropy (Garrido et al. 2023, sec. 3:
#: 1e-7, for float32).
RANKME_EPS = 1e-7


def feature_std(z: Tensor, normalize: bool = False) -> Tensor:
    """Mean per-dimension standard deviation over the batch.

    Args:
        z: ``(B, D)`` features, or ``(V, B, D)`` for ``V`` views (the std is taken per view, over ``B``).
        normalize: L2-normalize each row first and multiply the result by ``sqrt(D)`` (SimSiam's monitor:
            ~1 for isotropic spread, 0 for collapse, independent of the feature scale).
    Returns:
        0-dim float32 tensor: ``mean_{v,d} std_b(z[v, b, d])`` (unbiased std, ``torch.std``'s default);
        0 when ``B < 2``.
    """
    z = z.detach().float()
    if z.shape[-2] < 2:
        return z.new_zeros(())
    if normalize:
        z = F.normalize(z, dim=-1)
    std = z.std(dim=-2).mean()
    return std * z.shape[-1] ** 0.5 if normalize else std


def rankme(z: Tensor, eps: float = RANKME_EPS) -> Tensor:
    """RankMe (Garrido et al. 2023, eq. 1): ``exp(-sum_k p_k log p_k)``, ``p_k = sigma_k / ||sigma||_1 + eps``.

    Args:
        z: ``(N, D)`` embeddings, one row per image (not centred, as in the paper).
        eps: the paper's epsilon.
    Returns:
        0-dim float32 tensor in ``[1, min(N, D)]`` up to ``eps`` effects: ``k`` for ``k`` equal nonzero singular
        values, 1 when every row is a multiple of one vector. Only values at equal ``N`` compare: the paper uses
        25,600 images; a monitor batch of a few hundred bounds it by ``N``.
    """
    if z.dim() != 2:
        raise ValueError(f"rankme expects (N, D) embeddings, got shape {tuple(z.shape)}")
    s = torch.linalg.svdvals(z.detach().float())  # (min(N, D),)
    p = s / s.sum().clamp_min(torch.finfo(s.dtype).tiny) + eps
    return torch.exp(-(p * p.log()).sum())


def masked_mean_pool(tokens: Tensor, valid: Tensor | None = None) -> Tensor:
    """Mean of the valid tokens of each sample: ``(B, K, D)`` with ``valid`` ``(B, K)`` bool (or None: all
    valid) -> ``(B, D)`` float32."""
    t = tokens.detach().float()
    if valid is None:
        return t.mean(1)
    w = valid.unsqueeze(-1).float()
    return (t * w).sum(1) / w.sum(1).clamp_min(1.0)


def context_feature_std(tokens: Tensor, valid: Tensor | None = None) -> Tensor:
    """``ctx_feat_std``: :func:`feature_std` of the context encoder's output averaged over each sample's visible
    (valid) tokens, for the masked methods (I-JEPA, MAE). ``tokens`` ``(B, K, D)``, ``valid`` ``(B, K)``."""
    return feature_std(masked_mean_pool(tokens, valid))


def token_std(tokens: Tensor, mask: Tensor) -> Tensor:
    """Per-dimension std over the selected tokens of a batch, averaged over dimensions (data2vec's official
    ``target_var`` / ``pred_var`` monitors).

    Args:
        tokens: ``(B, N, D)``.
        mask: ``(B, N)`` bool, True for the tokens taken (all of the batch's selected tokens form one sample set).
    Returns:
        0-dim float32 tensor, unbiased; a weighted sum rather than boolean indexing, so no host sync.
    """
    t = tokens.detach().float()
    w = mask.unsqueeze(-1).float()  # (B, N, 1)
    count = w.sum().clamp_min(2.0)
    mean = (t * w).sum((0, 1)) / count  # (D,)
    var = (((t - mean) ** 2) * w).sum((0, 1)) / (count - 1)
    return var.clamp_min(0).sqrt().mean()


__all__ = ["RANKME_EPS", "feature_std", "rankme", "masked_mean_pool", "context_feature_std", "token_std"]
