"""Pre-norm transformer blocks as the I-JEPA reference builds and initializes them, and running a stack of them
over patch tokens; shared by the ViT encoders, the I-JEPA predictor and the MAE decoder.

Reference: facebookresearch/ijepa ``src/models/vision_transformer.py`` (``Block``, ``VisionTransformer``,
``VisionTransformerPredictor``) and ``src/helper.py:init_model``. The blocks are timm's, whose parameter names
coincide with the reference's and whose attention runs through ``F.scaled_dot_product_attention`` (fused kernels)
with a boolean mask, which is how padded tokens are kept out of attention.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from timm.models.vision_transformer import Block as TimmBlock
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
    timm's blocks (:class:`Block`, which can also compute only its last rows), whose parameter names (``norm1``,
    ``attn.qkv``, ``attn.proj``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``) coincide with the reference's."""
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


def run_blocks(x: Tensor, blocks, attn_mask: Tensor | None = None, checkpoint: bool = False) -> Tensor:
    """``x`` ``(B, L, D)`` through ``blocks`` in order. With ``checkpoint`` (and autograd recording), each block's
    activations are recomputed in the backward pass instead of being kept (``torch.utils.checkpoint``,
    non-reentrant, RNG state preserved so that drop path draws the same): memory for one more forward per block."""
    for block in blocks:
        if checkpoint and torch.is_grad_enabled():
            x = torch.utils.checkpoint.checkpoint(block, x, attn_mask=attn_mask, use_reentrant=False)
        else:
            x = block(x, attn_mask=attn_mask)
    return x


def encode_tokens(x: Tensor, blocks: nn.ModuleList, norm: nn.Module, keep: Tensor | None = None,
                  keep_valid: Tensor | None = None, checkpoint: bool = False) -> Tensor:
    """Embedded tokens ``(B, N, D)`` (positions already added) -> kept tokens ``(B, K, D)`` after the blocks and the
    final norm. ``keep`` ``(B, K)`` gathers after positions were added (reference ``forward``: ``x + pos_embed``
    then ``apply_masks``); ``keep_valid`` ``(B, K)`` hides padded entries as keys; ``checkpoint``: see
    :func:`run_blocks`."""
    if keep is not None:
        x = gather_tokens(x, keep)
    return norm(run_blocks(x, blocks, key_padding_attn_mask(keep_valid), checkpoint))


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


class Block(TimmBlock):
    """timm's pre-norm ViT block (same parameters and names) whose forward can compute only its last rows.

    ``forward(x, attn_mask=None, rows_from=None)``: ``x`` ``(B, L, D)`` -> ``(B, L, D)``, or with ``rows_from``
    ``(B, L - rows_from, D)``, equal to the full output's rows ``rows_from:`` (:func:`block_rows`). Going through
    the module call (not a free function on its submodules) keeps module hooks, such as FSDP's parameter
    gathering, in force.
    """

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False,
                rows_from: int | None = None) -> Tensor:
        if rows_from is None:
            return super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
        return block_rows(self, x, rows_from, attn_mask)


def block_rows(block: TimmBlock, x: Tensor, start: int, attn_mask: Tensor | None = None) -> Tensor:
    """``block(x, attn_mask)[:, start:]`` without computing the rows before ``start``.

    Keys and values still come from every row, but the query projection, attention output, output projection and
    MLP run on rows ``start:`` only: for a last block whose first rows are discarded (the I-JEPA predictor's
    context tokens), the same result for about 10/12 less of that block's work on those rows.

    Args:
        block: a timm ``Block`` (pre-norm attention + MLP with fused attention, no gate).
        x: ``(B, L, D)``.
        start: first row to keep.
        attn_mask: SDPA mask ``(B, 1, 1, L)`` (keys only) or ``(B, 1, L, L)``, or None.
    Returns:
        ``(B, L - start, D)``.
    """
    attn = block.attn
    if getattr(attn, "gate", None) is not None or not hasattr(attn, "fused_attn"):
        return TimmBlock.forward(block, x, attn_mask=attn_mask)[:, start:]  # layouts not reproduced here
    B, L, _ = x.shape
    H, hd = attn.num_heads, attn.head_dim
    inner = H * hd
    h = block.norm1(x)
    w, b = attn.qkv.weight, attn.qkv.bias  # rows: q (inner), k (inner), v (inner); heads within each
    q = F.linear(h[:, start:], w[:inner], None if b is None else b[:inner])  # (B, Lq, inner)
    kv = F.linear(h, w[inner:], None if b is None else b[inner:])  # (B, L, 2 * inner)
    q = q.reshape(B, L - start, H, hd).transpose(1, 2)  # (B, H, Lq, hd)
    k, v = kv.reshape(B, L, 2, H, hd).permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, L, hd) each
    q, k = attn.q_norm(q), attn.k_norm(k)
    if attn_mask is not None and attn_mask.shape[-2] != 1:
        attn_mask = attn_mask[..., start:, :]
    if attn.fused_attn:
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=attn.attn_drop.p if attn.training else 0.0)
    else:  # timm's written-out attention
        scores = (q * attn.scale) @ k.transpose(-2, -1)  # (B, H, Lq, L)
        if attn_mask is not None:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        o = attn.attn_drop(scores.softmax(dim=-1)) @ v
    o = o.transpose(1, 2).reshape(B, L - start, inner)
    o = attn.proj_drop(attn.proj(attn.norm(o)))
    y = x[:, start:] + block.drop_path1(block.ls1(o))
    return y + block.drop_path2(block.ls2(block.mlp(block.norm2(y))))
