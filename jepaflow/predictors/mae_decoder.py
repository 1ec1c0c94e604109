"""The MAE decoder: a light ViT that reconstructs the pixels of masked patches from the visible tokens.

He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022 (arXiv 2111.06377), sec. 3 "MAE
decoder" and fig. 1; reference code facebookresearch/mae ``models_mae.py:MaskedAutoencoderViT.forward_decoder``.
The encoded visible tokens are projected to the decoder width, a shared learned mask token fills every other
position of the full grid, fixed 2D sin-cos position embeddings are added to all ``N`` tokens, and a stack of
transformer blocks, a LayerNorm and a linear layer map each token to the ``p * p * C`` pixel values of its patch.

Differences from the reference, all forced by jepaflow's encoder or harmless:

* the reference encoder has a class token, which the decoder carries along (and drops before the pixel head);
  jepaflow's ViT has none, so the decoder sequence is exactly the ``N`` patch tokens;
* the reference undoes its shuffle with a ``gather`` over ``ids_restore``; here the visible tokens are scattered
  to their (any-order) indices, which needs no shuffle order and accepts padded contexts from other maskers;
* the norm and pixel head are applied only at the requested target positions (they act per token, so this is
  the same as the reference computing them everywhere and the loss ignoring the visible ones).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from jepaflow.fields import Blocks, Heads, InitStd, MlpRatio, Width
from jepaflow.interfaces import PluginConfig, Predictor
from jepaflow.layers.masking import gather_tokens
from jepaflow.layers.pos_embed import sincos_pos_embed_2d
from jepaflow.layers.transformer import init_reference_weights, layer_norm, make_blocks


def fill_sequence(tokens: Tensor, idx: Tensor, valid: Tensor | None, mask_token: Tensor, num_patches: int) -> Tensor:
    """The full decoder input: each token at its grid position, the mask token everywhere else.

    Args:
        tokens: ``(B, K, d)`` visible tokens, already in the decoder width.
        idx: ``(B, K)`` int64 row-major positions of ``tokens`` in the grid of ``N`` patches.
        valid: ``(B, K)`` bool, False for padded entries (they are dropped), or None.
        mask_token: ``(d,)`` (or any shape holding ``d`` values) learned token of the masked positions.
        num_patches: ``N``.
    Returns:
        ``(B, N, d)``: row ``b`` holds ``tokens[b, k]`` at ``idx[b, k]`` and ``mask_token`` elsewhere.
        Gradients reach both ``tokens`` and ``mask_token``.
    """
    B, K, d = tokens.shape
    if valid is not None:
        # Padded entries are sent to an extra slot N that is cut off below, so they can never overwrite the
        # token of patch 0 (their index placeholder).
        idx = torch.where(valid.to(torch.bool), idx, torch.full_like(idx, num_patches))
    base = mask_token.reshape(1, 1, d).to(tokens.dtype).expand(B, num_patches + 1, d)
    full = base.scatter(1, idx.unsqueeze(-1).expand(B, K, d), tokens)
    return full[:, :num_patches]


class MAEDecoder(Predictor):
    """MAE's light ViT decoder: visible encoder tokens ``(B, K, D)`` -> pixels of target patches
    ``(B, M, K_tgt, p*p*C)`` (He et al. 2022; facebookresearch/mae ``forward_decoder``).

    Constructed as ``MAEDecoder(config, encoder=encoder)``; reads ``encoder.embed_dim``, ``encoder.grid_size``,
    ``encoder.patch_size`` and ``encoder.in_chans``.
    """

    class Config(PluginConfig):
        embed_dim: Width = Field(
            512, ge=4, description="decoder width (MAE paper table 1b/1c and models_mae.py: 512)"
        )
        depth: Blocks = Field(8, description="decoder blocks (MAE paper table 1a and models_mae.py: 8)")
        num_heads: Heads = Field(16, description="decoder attention heads (models_mae.py: 16)")
        mlp_ratio: MlpRatio = Field(4.0, description="MLP hidden/width ratio (models_mae.py: 4)")
        init: Literal["xavier", "trunc_normal"] = Field(
            "xavier",
            description="xavier: MAE's init (Linear xavier_uniform, bias 0, mask token normal 0.02); "
            "trunc_normal: jepaflow's ViT init (trunc_normal(init_std) everywhere)",
        )
        init_std: InitStd = Field(0.02, description="std of the mask token (and of weights with trunc_normal)")

        @model_validator(mode="after")
        def _check_dims(self) -> MAEDecoder.Config:
            if self.embed_dim % 4 != 0:
                raise ValueError(f"embed_dim ({self.embed_dim}) must be divisible by 4 for the 2D sin-cos table")
            if self.embed_dim % self.num_heads != 0:
                raise ValueError(f"embed_dim ({self.embed_dim}) is not divisible by num_heads ({self.num_heads})")
            return self

    def __init__(self, config: Config | None = None, *, encoder: Any):
        super().__init__()
        config = config if config is not None else self.Config()
        self.config = config
        d = config.embed_dim
        self.embed_dim = d
        self.depth = config.depth
        self.num_heads = config.num_heads
        self.grid_size = tuple(encoder.grid_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.patch_size = int(encoder.patch_size)
        self.in_chans = int(encoder.in_chans)
        #: pixels per patch, in patchify order (p, p, C)
        self.out_dim = self.patch_size**2 * self.in_chans

        # Parameter names follow the reference's decoder (decoder_embed, mask_token, decoder_pos_embed,
        # decoder_blocks, decoder_norm, decoder_pred).
        self.decoder_embed = nn.Linear(int(encoder.embed_dim), d)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d))
        # A buffer (the reference: a frozen Parameter): fixed sin-cos positions of the encoder's grid, no cls row.
        self.register_buffer("decoder_pos_embed", sincos_pos_embed_2d(d, self.grid_size).unsqueeze(0))
        self.decoder_blocks = make_blocks(d, config.depth, config.num_heads, config.mlp_ratio, 0.0)
        self.decoder_norm = layer_norm(d)
        self.decoder_pred = nn.Linear(d, self.out_dim)
        self._init_weights()

    def _init_weights(self) -> None:
        cfg = self.config
        if cfg.init == "trunc_normal":
            init_reference_weights(self, cfg.init_std)
            nn.init.trunc_normal_(self.mask_token, std=cfg.init_std)
            return
        # MAE initialize_weights / _init_weights: xavier_uniform Linear weights ("following official JAX ViT"),
        # zero biases, LayerNorm 1/0, mask token normal(0.02).
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.mask_token, std=cfg.init_std)

    def forward(
        self,
        context_tokens: Tensor,
        context_idx: Tensor,
        target_idx: Tensor,
        context_valid: Tensor | None = None,
        target_valid: Tensor | None = None,
    ) -> Tensor:
        """Reconstruct the pixels of the target patches.

        Args:
            context_tokens: ``(B, K_ctx, D_enc)`` encoder outputs of the visible patches.
            context_idx: ``(B, K_ctx)`` int64 row-major positions of the visible patches.
            target_idx: ``(B, M, K_tgt)`` int64 positions to reconstruct (MAE: one block of every masked patch).
            context_valid: ``(B, K_ctx)`` bool or None; padded context entries are dropped (their position keeps
                the mask token, unless another entry fills it).
            target_valid: ``(B, M, K_tgt)`` bool or None; unused here (every position of the full sequence is
                a real token), the outputs at padded targets are returned and meaningless.
        Returns:
            ``(B, M, K_tgt, p*p*C)`` pixel predictions, in :func:`jepaflow.objectives.mae.patchify` order.
        """
        del target_valid  # the decoder sequence is always the whole grid: nothing to hide from attention
        x = self.decoder_embed(context_tokens)  # (B, K_ctx, d)
        x = fill_sequence(x, context_idx, context_valid, self.mask_token, self.num_patches)  # (B, N, d)
        x = x + self.decoder_pos_embed
        for block in self.decoder_blocks:
            x = block(x)
        # Norm and head act per token: apply them only where the loss looks.
        x = gather_tokens(x, target_idx)  # (B, M, K_tgt, d)
        return self.decoder_pred(self.decoder_norm(x))

    def extra_repr(self) -> str:
        return f"grid_size={self.grid_size}, embed_dim={self.embed_dim}, out_dim={self.out_dim}"
