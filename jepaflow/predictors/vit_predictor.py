"""The I-JEPA predictor: a narrow ViT that predicts target-block representations from context tokens.

I-JEPA (Assran et al., CVPR 2023, sec. 3 and fig. 3); reference code
``src/models/vision_transformer.py:VisionTransformerPredictor`` in facebookresearch/ijepa. Each target block
is predicted in its own sequence ``[embed(context) + pos(context) ; mask_token + pos(target block)]``; the
reference builds the ``M`` sequences by repeating the batch (``x.repeat(len(masks), 1, 1)``), here they are
laid out as ``(B * M, K_ctx + K_tgt, d)`` in one go. Parameter names equal the reference's, so an official
checkpoint's ``predictor`` state dict loads with ``strict=True``.

Two options change the cost, not the parameters:

* ``last_block_targets_only`` (default on): the context rows of the last block's output are discarded, so that
  block computes only the target rows (keys and values still come from every row): the same predictions.
* ``target_layout: one_sequence`` (default off; **not the official computation**): one sequence per image,
  ``[context ; block 1 ; ... ; block M]`` of ``K_ctx + M * K_tgt`` tokens instead of ``M`` sequences of
  ``K_ctx + K_tgt``, with a block-diagonal attention mask: the queries of block ``m`` attend to the context and to
  block ``m``; the context attends to the context only. Each block's queries thus see what they see in the official
  layout, but the context tokens no longer attend to the queries (in the official layout the context of sequence
  ``m`` attends to block ``m``'s mask tokens, so it differs per block); that is what lets one context stream serve
  every block. The context is processed once instead of ``M`` times. Without the mask (full attention) the
  queries of one block would also see the other blocks' positions, a further change; the mask keeps each block's
  prediction independent of the others', as in the official objective.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from jepaflow.fields import Blocks, DropRate, Heads, InitStd, MlpRatio, Width
from jepaflow.interfaces import PluginConfig, Predictor
from jepaflow.layers.pos_embed import sincos_pos_embed_2d
from jepaflow.layers.transformer import (
    init_reference_weights,
    key_padding_attn_mask,
    layer_norm,
    make_blocks,
    run_blocks,
)

#: heads when neither the config nor the encoder says (the reference ``VisionTransformerPredictor`` default)
DEFAULT_NUM_HEADS = 12


def predictor_sequences(
    context: Tensor, context_pos: Tensor, target_pos: Tensor, mask_token: Tensor
) -> tuple[Tensor, int]:
    """Lay out one predictor sequence per (image, target block).

    Args:
        context: ``(B, K_ctx, d)`` context tokens already in the predictor width.
        context_pos: ``(B, K_ctx, d)`` their position embeddings.
        target_pos: ``(B, M, K_tgt, d)`` position embeddings of the target blocks.
        mask_token: ``(1, 1, d)`` the learned query token.
    Returns:
        ``((B * M, K_ctx + K_tgt, d), K_ctx)``: row ``b * M + m`` is
        ``[context[b] + context_pos[b] ; mask_token + target_pos[b, m]]``.
    """
    B, M, K_tgt, d = target_pos.shape
    K_ctx = context.shape[1]
    ctx = (context + context_pos).unsqueeze(1).expand(B, M, K_ctx, d)
    queries = mask_token.reshape(1, 1, 1, d) + target_pos
    return torch.cat([ctx, queries], dim=2).reshape(B * M, K_ctx + K_tgt, d), K_ctx


def one_sequence_attn_mask(
    context_valid: Tensor | None, target_valid: Tensor | None, batch: int, blocks: int, k_ctx: int, k_tgt: int,
    device: torch.device,
) -> Tensor:
    """Block-diagonal attention of the one-sequence layout ``[context ; block 1 ; ... ; block M]``.

    Returns:
        ``(B, 1, L, L)`` bool, ``L = K_ctx + M * K_tgt``, True where row ``i`` may attend to key ``j``: ``j`` is a
        valid context token, or a valid query of the same block as ``i``. Context rows attend to the context only.
    """
    group = torch.cat([torch.full((k_ctx,), -1, device=device),
                       torch.arange(blocks, device=device).repeat_interleave(k_tgt)])  # (L,) -1 = context
    allowed = (group[None, :] == -1) | (group[:, None] == group[None, :])  # (L, L)
    flat_targets = None if target_valid is None else target_valid.reshape(batch, 1, blocks * k_tgt)
    valid = predictor_key_mask(context_valid, flat_targets, batch, 1, k_ctx, blocks * k_tgt)  # (B, L) or None
    if valid is None:
        return allowed.expand(batch, 1, -1, -1)
    return allowed[None, None] & valid[:, None, None, :]


def predictor_key_mask(
    context_valid: Tensor | None, target_valid: Tensor | None, batch: int, blocks: int, k_ctx: int, k_tgt: int
) -> Tensor | None:
    """``(B * M, K_ctx + K_tgt)`` bool validity of the sequences of :func:`predictor_sequences`, or None when
    nothing is padded (so attention stays mask-free and may use the fastest kernels)."""
    if context_valid is None and target_valid is None:
        return None
    device = (context_valid if context_valid is not None else target_valid).device
    if context_valid is None:
        context_valid = torch.ones(batch, k_ctx, dtype=torch.bool, device=device)
    if target_valid is None:
        target_valid = torch.ones(batch, blocks, k_tgt, dtype=torch.bool, device=device)
    ctx = context_valid.to(torch.bool).unsqueeze(1).expand(batch, blocks, k_ctx)
    return torch.cat([ctx, target_valid.to(torch.bool)], dim=2).reshape(batch * blocks, k_ctx + k_tgt)


class VisionTransformerPredictor(Predictor):
    """I-JEPA's ViT predictor: ``(B, K_ctx, D)`` context tokens -> ``(B, M, K_tgt, D)`` target predictions.

    See :class:`jepaflow.interfaces.Predictor`. Constructed as ``VisionTransformerPredictor(config,
    encoder=encoder)``; reads ``encoder.embed_dim``, ``encoder.grid_size`` and ``encoder.num_heads``.
    """

    class Config(PluginConfig):
        embed_dim: Width = Field(384, ge=4, description="predictor width (the paper's 384 for every encoder)")
        depth: Blocks = Field(
            6, description="predictor blocks (6: init_model default, ViT-B; 12: official ViT-H configs; 16: ViT-G)"
        )
        num_heads: Heads | None = Field(
            None, description="attention heads; None: the encoder's (as the reference init_model does)"
        )
        mlp_ratio: MlpRatio = Field(4.0, description="MLP hidden/width ratio")
        drop_path_rate: DropRate = Field(0.0, description="stochastic depth of the last block")
        init_std: InitStd = Field(0.02, description="std of the truncated-normal weight init")
        last_block_targets_only: bool = Field(
            True, description="the last block computes only the target rows, whose outputs are used (same result)"
        )
        target_layout: Literal["per_block", "one_sequence"] = Field(
            "per_block",
            description="per_block: one sequence per target block (official); one_sequence: all blocks in one "
            "sequence with block-diagonal attention, the context not attending to the queries (cheaper; a deviation)",
        )

        @model_validator(mode="after")
        def _check_dims(self) -> VisionTransformerPredictor.Config:
            if self.embed_dim % 4 != 0:
                raise ValueError(
                    f"embed_dim ({self.embed_dim}) must be divisible by 4 for the 2D sin-cos table"
                )
            if self.num_heads is not None and self.embed_dim % self.num_heads != 0:
                raise ValueError(
                    f"embed_dim ({self.embed_dim}) is not divisible by num_heads ({self.num_heads})"
                )
            return self

    def __init__(self, config: Config | None = None, *, encoder: Any):
        super().__init__()
        config = config if config is not None else self.Config()
        self.config = config
        d = config.embed_dim
        heads = config.num_heads
        if heads is None:
            heads = getattr(encoder, "num_heads", None) or DEFAULT_NUM_HEADS
            if d % heads != 0:
                raise ValueError(
                    f"predictor.embed_dim ({d}) is not divisible by the {heads} attention heads inherited "
                    f"from the encoder; set predictor.num_heads to a divisor of {d}"
                )
        self.embed_dim = d
        self.num_heads = heads
        self.depth = config.depth
        self.out_dim = int(encoder.embed_dim)
        self.grid_size = tuple(encoder.grid_size)

        self.predictor_embed = nn.Linear(self.out_dim, d)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d))
        # buffer (same state-dict key as the reference's frozen Parameter), positions of the encoder's grid
        self.register_buffer("predictor_pos_embed", sincos_pos_embed_2d(d, self.grid_size).unsqueeze(0))
        self.predictor_blocks = make_blocks(d, config.depth, heads, config.mlp_ratio, config.drop_path_rate)
        self.predictor_norm = layer_norm(d)
        self.predictor_proj = nn.Linear(d, self.out_dim)
        # Effective reference init (see init_reference_weights): no depth rescale; mask token trunc_normal.
        init_reference_weights(self, config.init_std)
        nn.init.trunc_normal_(self.mask_token, std=config.init_std)

    def forward(
        self,
        context_tokens: Tensor,
        context_idx: Tensor,
        target_idx: Tensor,
        context_valid: Tensor | None = None,
        target_valid: Tensor | None = None,
    ) -> Tensor:
        """Predict every target block from the context.

        Args:
            context_tokens: ``(B, K_ctx, D)`` encoder outputs at ``context_idx``.
            context_idx: ``(B, K_ctx)`` int64 row-major patch indices of the context.
            target_idx: ``(B, M, K_tgt)`` int64 patch indices of the ``M`` target blocks.
            context_valid: ``(B, K_ctx)`` bool or None; padded context tokens are hidden from attention.
            target_valid: ``(B, M, K_tgt)`` bool or None; padded queries are hidden as keys (their outputs are
                returned but meaningless).
        Returns:
            ``(B, M, K_tgt, D)`` predictions in the encoder width.
        """
        B, M, K_tgt = target_idx.shape
        table = self.predictor_pos_embed[0]  # (N, d)
        context = self.predictor_embed(context_tokens)  # (B, K_ctx, d)
        K_ctx = context.shape[1]
        if self.config.target_layout == "one_sequence":
            queries = self.mask_token.reshape(1, 1, 1, -1) + table[target_idx]  # (B, M, K_tgt, d)
            x = torch.cat([context + table[context_idx], queries.flatten(1, 2)], dim=1)  # (B, K_ctx + M*K_tgt, d)
            attn_mask = one_sequence_attn_mask(context_valid, target_valid, B, M, K_ctx, K_tgt, x.device)
        else:
            x, _ = predictor_sequences(context, table[context_idx], table[target_idx], self.mask_token)
            valid = predictor_key_mask(context_valid, target_valid, B, M, K_ctx, K_tgt)
            attn_mask = key_padding_attn_mask(valid)  # (B*M, 1, 1, K_ctx + K_tgt) or None
        *blocks, last = self.predictor_blocks
        x = run_blocks(x, blocks, attn_mask, checkpoint=self.grad_checkpointing)
        if self.config.last_block_targets_only:
            x = last(x, attn_mask=attn_mask, rows_from=K_ctx)  # only the queries' rows
        else:
            x = last(x, attn_mask=attn_mask)[:, K_ctx:]
        x = self.predictor_norm(x)  # per token: the same on the kept rows
        return self.predictor_proj(x).reshape(B, M, K_tgt, self.out_dim)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable  # every block but the last (whose rows are trimmed)

    def extra_repr(self) -> str:
        return f"grid_size={self.grid_size}, embed_dim={self.embed_dim}, out_dim={self.out_dim}"
