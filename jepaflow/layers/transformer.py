"""Pre-norm transformer blocks as the I-JEPA reference builds and initializes them, and running a stack of them
over patch tokens; shared by the ViT encoders, the I-JEPA predictor and the MAE decoder.

Reference: facebookresearch/ijepa ``src/models/vision_transformer.py`` (``Block``, ``VisionTransformer``,
``VisionTransformerPredictor``) and ``src/helper.py:init_model``. The blocks are timm's, whose parameter names
coincide with the reference's and whose attention runs through ``F.scaled_dot_product_attention`` (fused kernels)
with a boolean mask, which is how padded tokens are kept out of attention.
"""

from __future__ import annotations

import torch
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from jepaflow.layers.masking import gather_tokens

#: LayerNorm epsilon of every norm in the reference models (``partial(nn.LayerNorm, eps=1e-6)``).
LN_EPS = 1e-6


def layer_norm(dim: int, **kwargs) -> nn.LayerNorm:
    """The reference's norm layer, ``partial(nn.LayerNorm, eps=1e-6)``."""
    return nn.LayerNorm(dim, eps=LN_EPS, **kwargs)


def make_blocks(
    dim: int, depth: int, num_heads: int, mlp_ratio: float, drop_path_rate: float
) -> nn.ModuleList:
    """``depth`` pre-norm transformer blocks as in the reference ``Block`` (qkv bias, GELU, LayerNorm
    eps 1e-6), the stochastic-depth rate growing linearly from 0 to ``drop_path_rate`` (reference ``dpr``).
    timm's parameter names (``norm1``, ``attn.qkv``, ``attn.proj``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``)
    coincide with the reference's."""
    # plain Python (not torch.linspace) so that building under a `torch.device("meta")` context works
    rates = [drop_path_rate * i / (depth - 1) for i in range(depth)] if depth > 1 else [0.0] * depth
    return nn.ModuleList(
        Block(
            dim=dim,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=True,
            drop_path=rate,
            act_layer=nn.GELU,
            norm_layer=layer_norm,
        )
        for rate in rates
    )


def init_reference_weights(module: nn.Module, std: float) -> None:
    """The *effective* initialization of the reference models.

    The reference ``VisionTransformer`` / ``VisionTransformerPredictor`` constructors draw every Linear and
    the patch Conv2d from trunc_normal(std) (bias 0) and then divide ``attn.proj`` and ``mlp.fc2`` of block
    ``i`` by ``sqrt(2 (i + 1))`` (``fix_init_weight``). But ``src/helper.py:init_model`` then re-initializes
    every Linear with trunc_normal(0.02), bias 0, and every LayerNorm to 1/0, which undoes that depth
    rescale. The models trained by the reference therefore start from: Linear trunc_normal(std) / bias 0 (no
    depth rescale), Conv2d trunc_normal(std) / bias 0, LayerNorm weight 1 / bias 0. That is what this
    reproduces (the reference re-init hard-codes 0.02 for Linear layers; here ``std`` is used throughout,
    0.02 by default). The truncation bounds are +-2 in absolute value, as in the reference ``trunc_normal_``
    (and torch's).
    """
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.trunc_normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def key_padding_attn_mask(valid: Tensor | None) -> Tensor | None:
    """SDPA boolean mask that hides padded keys.

    Args:
        valid: ``(B, L)`` bool, False for padding; or None.
    Returns:
        ``(B, 1, 1, L)`` bool (True = may be attended to), broadcast over heads and queries; None for None.
        Only keys are masked: a padded query still attends to the valid keys, so its (discarded) output stays
        finite, and valid tokens never see padding.
    """
    if valid is None:
        return None
    return valid[:, None, None, :].to(torch.bool)


def encode_tokens(x: Tensor, blocks: nn.ModuleList, norm: nn.Module, keep: Tensor | None = None,
                  keep_valid: Tensor | None = None) -> Tensor:
    """Embedded tokens ``(B, N, D)`` (positions already added) -> kept tokens ``(B, K, D)`` after the blocks and the
    final norm. ``keep`` ``(B, K)`` gathers after positions were added (reference ``forward``: ``x + pos_embed``
    then ``apply_masks``); ``keep_valid`` ``(B, K)`` hides padded entries as keys."""
    if keep is not None:
        x = gather_tokens(x, keep)
    attn_mask = key_padding_attn_mask(keep_valid)
    for block in blocks:
        x = block(x, attn_mask=attn_mask)
    return norm(x)


def last_block_outputs(x: Tensor, blocks: nn.ModuleList, layers: int) -> list[Tensor]:
    """Outputs ``(B, N, D)`` of the last ``layers`` blocks (oldest first, before any final norm)."""
    depth = len(blocks)
    if not 1 <= layers <= depth:
        raise ValueError(f"layers must be in [1, {depth}], got {layers}")
    outputs: list[Tensor] = []
    for i, block in enumerate(blocks):
        x = block(x)
        if i >= depth - layers:
            outputs.append(x)
    return outputs
