"""data2vec (vision): a student sees the image with masked patches and regresses, at the masked positions, the
average of the top K layer outputs of an EMA teacher that sees the whole image.

Baevski, Hsu, Xu, Babu, Gu, Auli, "data2vec: A General Framework for Self-supervised Learning in Speech, Vision
and Language", ICML 2022 (arXiv 2202.03555), sec. 3 (3.2 teacher, 3.3 targets, 3.4 objective) and 4.1 (vision);
official vision code facebookresearch/data2vec_vision ``beit/modeling_cyclical.py`` (student, mask token,
regression head), ``beit/engine_for_cyclical.py:train_one_epoch`` (targets, loss) and the ViT-B command of its
``beit/README.md``; fairseq ``examples/data2vec/models/data2vec_vision.py`` is a later re-implementation.

Per batch (B images, N patches, D width, masked set from the masker)::

    m = masked patches                                     (B, N) bool   the masker's ``targets`` indices
    a_l = teacher_block_l(image), l = L-K+1..L             K x (B, N, D) block outputs, no final norm, no grad
    y = norm_final( (1/K) sum_l norm_layer(a_l) )          (B, N, D)     targets (sec. 3.3)
    x = student(image with mask_token at m)                (B, N, D)     encoder.forward_masked, after its norm
    f = head(x)                                            (B, N, D)     linear regression head
    loss = mean over masked (b, n) and d of smooth_l1_beta(f - y)        (sec. 3.4; beta = 2 for vision)

The teacher is an EMA copy of the encoder (``target_updater: ema``) run in eval mode on the unmasked image. The
mask token and the head belong to this objective (the teacher needs neither).

Paper vs code, and what we implement:

* Normalization of each layer. Sec. 3.3: instance norm for speech, parameter-free layer norm "for NLP and vision"
  (per token over D). The official vision code layer-normalizes each target layer (``target_layer_norm_last``) and
  the average again (``--post_target_layer_norm`` in the ViT-B command). Defaults: ``layer_norm`` / ``layer_norm``;
  ``instance_norm`` (per sample and channel over the N tokens) is available for both.
* Which output of a block. Sec. 3.3 describes the FFN output before the last residual connection (chosen on
  speech); the vision command uses ``--layer_results end``, the block output after the residual, which is what
  ``Encoder.forward_layers`` returns. We use the latter.
* Loss. Smooth L1 with beta 2, the mean over masked tokens and dimensions (``F.smooth_l1_loss(..., beta=2)``,
  ``--l1_beta=2.0``, no ``loss_scale``); ``l2`` gives the official ``--l2_loss`` (mean squared error).
* Masking. The paper masks 60% of the patches with BEiT's blockwise masking (blocks of >= 16 patches, random
  aspect ratio). Any masker works here; the recipes use the ``random`` masker at ratio 0.6 (uniform, not
  blockwise), see the recipes.
* Backbone. The official student is a BEiT ViT with a class token, a shared relative position bias and
  LayerScale; here it is the recipe's encoder (I-JEPA's ViT: fixed sin-cos positions, no class token).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from jepaflow.fields import Blocks, InitStd
from jepaflow.interfaces import Batch, Encoder, Objective, ObjectiveOutput, PluginConfig
from jepaflow.layers.monitors import token_std
from jepaflow.layers.target import TargetNetworksMixin, frozen_copy

Norm = Literal["layer_norm", "instance_norm", "none"]


def indices_to_mask(idx: Tensor, num_patches: int, valid: Tensor | None = None) -> Tensor:
    """Boolean patch mask from index sets.

    Args:
        idx: ``(B, ...)`` int64 patch indices (e.g. a masker's ``targets`` ``(B, M, K)``); repeats are allowed.
        num_patches: ``N``.
        valid: bool like ``idx``, False for padding entries (which are then ignored), or None.
    Returns:
        ``(B, N)`` bool, True at every valid index of the row.
    """
    B = idx.shape[0]
    flat = idx.reshape(B, -1)
    src = torch.ones(flat.shape, device=idx.device) if valid is None else valid.reshape(B, -1).float()
    # amax, not plain scatter: a padding entry (index 0, value 0) must not undo a real index 0 (value 1)
    hits = torch.zeros(B, num_patches, device=idx.device).scatter_reduce(1, flat, src, reduce="amax")
    return hits > 0


def normalize_tokens(x: Tensor, kind: str) -> Tensor:
    """Parameter-free normalization of ``(B, N, D)`` tokens (data2vec sec. 3.3).

    ``layer_norm``: each token over its ``D`` features (``F.layer_norm``, eps 1e-5, as the official code);
    ``instance_norm``: each sample's channel over the ``N`` tokens (``F.instance_norm`` on ``(B, D, N)``, eps 1e-5);
    ``none``: unchanged.
    """
    if kind == "layer_norm":
        return F.layer_norm(x, x.shape[-1:])
    if kind == "instance_norm":
        return F.instance_norm(x.transpose(1, 2)).transpose(1, 2)
    if kind == "none":
        return x
    raise ValueError(f"unknown normalization {kind!r}")


def data2vec_targets(layers: list[Tensor], layer_norm: str = "layer_norm", final_norm: str = "layer_norm") -> Tensor:
    """data2vec regression targets (sec. 3.3): ``y = final_norm((1/K) sum_l layer_norm(a_l))``.

    Args:
        layers: the teacher's top ``K`` block outputs, each ``(B, N, D)``.
        layer_norm, final_norm: ``"layer_norm" | "instance_norm" | "none"``, see :func:`normalize_tokens`.
    Returns:
        ``(B, N, D)`` float32 targets.
    """
    if not layers:
        raise ValueError("data2vec targets need at least one layer")
    y = sum(normalize_tokens(a.float(), layer_norm) for a in layers) / len(layers)
    return normalize_tokens(y, final_norm)


def data2vec_loss(pred: Tensor, target: Tensor, mask: Tensor, kind: str = "smooth_l1", beta: float = 2.0) -> Tensor:
    """Regression loss at the masked positions only (sec. 3.4).

    Args:
        pred, target: ``(B, N, D)``.
        mask: ``(B, N)`` bool, True where the loss counts (the masked patches).
        kind: ``"smooth_l1"``: ``0.5 e^2 / beta`` if ``|e| < beta`` else ``|e| - 0.5 beta`` per element;
            ``"l2"``: ``e^2``.
        beta: smooth-L1 transition point (vision: 2).
    Returns:
        scalar: the mean over the masked tokens and their ``D`` features (official: ``F.smooth_l1_loss`` /
        ``F.mse_loss`` on the gathered masked tokens); 0 when nothing is masked. A weighted sum rather than
        boolean indexing, so no host sync.
    """
    if kind == "smooth_l1":
        per_elem = F.smooth_l1_loss(pred, target, reduction="none", beta=beta)
    elif kind == "l2":
        per_elem = (pred - target).pow(2)
    else:
        raise ValueError(f"unknown data2vec loss {kind!r}")
    w = mask.unsqueeze(-1).to(per_elem.dtype)  # (B, N, 1)
    return (per_elem * w).sum() / (w.sum() * pred.shape[-1]).clamp_min(1.0)


class Data2VecObjective(TargetNetworksMixin, Objective):
    """data2vec (Baevski et al. 2022), vision: a student with masked input patches regresses, at the masked
    positions, the layer-normalized average of an EMA teacher's top K block outputs on the full image."""

    class Config(PluginConfig):
        top_k_layers: Blocks = Field(
            6, description="K, teacher blocks averaged into the targets (paper sec. 4.1 and the official "
            "ViT-B command --target_layers [6..11]: 6 of 12)"
        )
        layer_norm: Norm = Field(
            "layer_norm", description="normalization of each teacher block output before averaging: layer_norm "
            "(paper sec. 3.3 for vision; official target_layer_norm_last), instance_norm (paper: speech), none"
        )
        final_norm: Norm = Field(
            "layer_norm", description="normalization of the averaged targets: layer_norm (official ViT-B command "
            "--post_target_layer_norm), instance_norm, none"
        )
        loss: Literal["smooth_l1", "l2"] = Field(
            "smooth_l1", description="smooth_l1 (paper sec. 3.4, official --l1_beta) or l2 (official --l2_loss)"
        )
        smooth_l1_beta: float = Field(
            2.0, gt=0, le=1e4, description="smooth-L1 transition point beta (paper sec. 4.1 and official ViT-B: 2)"
        )
        init_std: InitStd = Field(
            0.02, description="std of the truncated-normal init of the mask token and head weights "
            "(official init_std 0.02)"
        )

    requires: ClassVar[frozenset[str]] = frozenset({"encoder", "masker", "target_updater"})
    needs: ClassVar[frozenset[str]] = frozenset({"intermediate_layers", "mask_token"})

    def __init__(self, config: Config, *, encoder: Encoder):
        super().__init__()
        self.config = config
        depth = getattr(encoder, "depth", None)
        if depth is not None and config.top_k_layers > depth:
            raise ValueError(f"top_k_layers ({config.top_k_layers}) exceeds the encoder's depth ({depth})")
        self.encoder = encoder
        D = encoder.embed_dim
        # The learned token that replaces masked patch embeddings (official mask_token, trunc_normal(0.02) in
        # [-std, std]) and the linear regression head on the student's output (official lm_head).
        self.mask_token = nn.Parameter(torch.empty(D))
        nn.init.trunc_normal_(self.mask_token, std=config.init_std, a=-config.init_std, b=config.init_std)
        self.head = nn.Linear(D, D)
        nn.init.trunc_normal_(self.head.weight, std=config.init_std)
        nn.init.zeros_(self.head.bias)
        # The teacher: an EMA copy of the encoder (official ModelEmaV2 of the student), no gradient, always in eval
        # mode (ModelEmaV2 keeps its copy in eval; TargetNetworksMixin), so stochastic depth never perturbs it.
        self.target_encoder = frozen_copy(encoder)

    def forward(self, batch: Batch) -> ObjectiveOutput:
        masks = batch.masks
        if masks is None:
            raise ValueError("data2vec needs masks: the recipe must have a masker")
        images = batch.images
        N = self.encoder.num_patches
        mask = indices_to_mask(masks.targets, N, masks.targets_valid)  # (B, N) True = masked for the student
        with torch.no_grad():
            layers = self.target_encoder.forward_layers(images, self.config.top_k_layers)
            y = data2vec_targets(layers, self.config.layer_norm, self.config.final_norm)  # (B, N, D) fp32
        x = self.encoder.forward_masked(images, mask, self.mask_token)  # (B, N, D)
        pred = self.head(x)
        with torch.autocast(pred.device.type, enabled=False):
            loss = data2vec_loss(pred.float(), y, mask, self.config.loss, self.config.smooth_l1_beta)
        with torch.no_grad():
            metrics = {  # per-dimension std over the masked tokens (official target_var / pred_var)
                "target_std": token_std(y, mask),
                "pred_std": token_std(pred, mask),
                "mask_ratio": mask.float().mean(),
            }
        return ObjectiveOutput(loss=loss, metrics=metrics)

    def target_pairs(self):
        return [(self.encoder, self.target_encoder)]

    def encoders(self) -> dict[str, Encoder]:
        return {"student": self.encoder, "teacher": self.target_encoder}

    def representation_encoder(self) -> Encoder:
        # data2vec fine-tunes and evaluates the student (official fine-tuning loads the checkpoint's "model" key,
        # the student, not "model_ema").
        return self.encoder
