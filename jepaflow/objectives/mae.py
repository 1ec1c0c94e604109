"""MAE: reconstruct the pixels of randomly masked patches from the visible ones.

He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022 (arXiv 2111.06377), sec. 3; reference
code facebookresearch/mae ``models_mae.py`` (``patchify``, ``forward_loss``) and ``main_pretrain.py``.

Per batch (B images, N patches of p x p pixels and C channels, K visible patches, the M = 1 block of
K_tgt = N - K masked patches from the ``random`` masker)::

    z = encoder(images, keep=context)              (B, K, D)            the encoder sees visible patches only
    x = decoder(z, context, targets)               (B, M, K_tgt, p*p*C)
    t = patchify(images)[targets]                  (B, M, K_tgt, p*p*C)
    t = (t - mean(t)) / sqrt(var(t) + eps)         per patch, if norm_pix_loss
    loss = mean over masked patches of mean over pixels of (x - t)^2

There is no target network and no stop-gradient: the targets are pixels. The encoder's tokens are evaluated on
the full, unmasked image (MAE sec. 4 evaluates its encoder on uncorrupted images). MAE's linear probe reads
its encoder's class token (with an extra BatchNorm); jepaflow's ViT has no class token, and the probes
mean-pool the patch tokens, as for I-JEPA.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field
from torch import Tensor

from jepaflow.fields import Epsilon
from jepaflow.interfaces import Batch, Encoder, Objective, ObjectiveOutput, PluginConfig, Predictor
from jepaflow.layers.masking import gather_tokens
from jepaflow.layers.monitors import context_feature_std


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """Cut images into flattened non-overlapping patches.

    Args:
        images: ``(B, C, H, W)``, ``H`` and ``W`` multiples of ``patch_size``.
        patch_size: ``p``.
    Returns:
        ``(B, N, p*p*C)`` with ``N = (H/p) * (W/p)`` in row-major grid order (the encoder's token order); within
        a patch the values run over (pixel row, pixel column, channel), channel fastest: the reference
        ``patchify``'s ``einsum('nchpwq->nhwpqc')`` order, so predictions are laid out as MAE's.
    """
    B, C, H, W = images.shape
    p = patch_size
    if H % p or W % p:
        raise ValueError(f"image size {H}x{W} is not divisible by the patch size {p}")
    h, w = H // p, W // p
    x = images.reshape(B, C, h, p, w, p).permute(0, 2, 4, 3, 5, 1)  # (B, h, w, p, p, C)
    return x.reshape(B, h * w, p * p * C)


def unpatchify(patches: Tensor, patch_size: int, grid_size: tuple[int, int], channels: int) -> Tensor:
    """Inverse of :func:`patchify`: ``(B, N, p*p*C) -> (B, C, h*p, w*p)`` for a ``(h, w)`` patch grid."""
    B = patches.shape[0]
    (h, w), p, C = grid_size, patch_size, channels
    x = patches.reshape(B, h, w, p, p, C).permute(0, 5, 1, 3, 2, 4)  # (B, C, h, p, w, p)
    return x.reshape(B, C, h * p, w * p)


def normalize_patches(patches: Tensor, eps: float = 1e-6) -> Tensor:
    """MAE's per-patch pixel normalization (the ``norm_pix_loss`` target, paper table 1d).

    Args:
        patches: ``(..., P)`` pixel values of each patch.
        eps: added to the variance before the square root.
    Returns:
        ``(patches - mean) / sqrt(var + eps)`` with the mean and the *unbiased* variance (``torch.var``'s
        default, as the reference ``forward_loss`` calls it) taken over the last dimension.
    """
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)  # unbiased, like the reference
    return (patches - mean) / (var + eps).sqrt()


def mae_loss(pred: Tensor, target: Tensor, valid: Tensor | None = None) -> Tensor:
    """Mean squared error per patch, averaged over the (valid) masked patches.

    Args:
        pred, target: ``(B, M, K, P)`` pixels of the masked patches (predicted, true).
        valid: ``(B, M, K)`` bool, False for padded entries, or None (all valid).
    Returns:
        Scalar ``sum_{b,m,k} v_bmk * (1/P) sum_i (pred - target)^2 / sum_{b,m,k} v_bmk``: the reference's
        ``((pred - target)**2).mean(-1)`` then ``(loss * mask).sum() / mask.sum()``, where ``mask`` marks the
        removed patches (the visible ones never enter: ``pred`` only holds masked positions).
    """
    per_patch = (pred - target).pow(2).mean(dim=-1)  # (B, M, K)
    if valid is None:
        return per_patch.mean()
    w = valid.to(per_patch.dtype)
    return (per_patch * w).sum() / w.sum().clamp_min(1.0)


class MAEObjective(Objective):
    """MAE (He et al. 2022): the encoder sees the visible patches, a light decoder reconstructs the
    (per-patch normalized) pixels of the masked ones; MSE on masked patches only, no target network."""

    class Config(PluginConfig):
        norm_pix_loss: bool = Field(
            True,
            description="regress per-patch normalized pixels (MAE paper table 1d, official --norm_pix_loss, "
            "used for its best results); False: raw (normalized-image) pixels",
        )
        eps: Epsilon = Field(1e-6, description="added to the per-patch variance (official forward_loss: 1e-6)")

    requires: ClassVar[frozenset[str]] = frozenset({"encoder", "predictor", "masker"})
    needs: ClassVar[frozenset[str]] = frozenset({"drop_patches"})

    def __init__(self, config: Config, *, encoder: Encoder, predictor: Predictor):
        super().__init__()
        self.config = config
        self.encoder = encoder
        self.predictor = predictor
        pixels = encoder.patch_size**2 * encoder.in_chans
        if predictor.out_dim != pixels:
            raise ValueError(
                f"MAE reconstructs pixels: the predictor must output patch_size^2 * in_chans = {pixels} values per "
                f"patch, but it outputs {predictor.out_dim} (use the mae_decoder predictor)"
            )
        if config.norm_pix_loss and pixels < 2:
            raise ValueError("norm_pix_loss needs patches of at least 2 values (a variance per patch)")

    def forward(self, batch: Batch) -> ObjectiveOutput:
        masks = batch.masks
        if masks is None:
            raise ValueError("MAE needs masks: the recipe must have a masker")
        z = self.encoder(batch.images, masks.context, masks.context_valid)  # (B, K, D)
        pred = self.predictor(z, masks.context, masks.targets, masks.context_valid, masks.targets_valid)
        with torch.no_grad():  # pixels: nothing to differentiate
            target = gather_tokens(patchify(batch.images.float(), self.encoder.patch_size), masks.targets)
            if self.config.norm_pix_loss:
                target = normalize_patches(target, self.config.eps)
        loss = mae_loss(pred.float(), target, masks.targets_valid)
        with torch.no_grad():
            pd = pred.detach().float()
            metrics = {  # names as in docs/monitors.md
                "ctx_feat_std": context_feature_std(z, masks.context_valid),
                # spread of the pixels within a reconstructed patch: ~0 early, ~1 when normalized patches are
                # reproduced
                "recon_patch_std": pd.std(dim=-1).mean() if pd.shape[-1] > 1 else pd.new_zeros(()),
            }
        return ObjectiveOutput(loss=loss, metrics=metrics)

    def encoders(self) -> dict[str, Encoder]:
        return {"context": self.encoder}

    def representation_encoder(self) -> Encoder:
        # MAE evaluates its (only) encoder, on full unmasked images (the probes call it with keep=None).
        return self.encoder
