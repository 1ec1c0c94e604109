"""Vision Transformer encoder with a fixed 2D sin-cos position table and no class token (I-JEPA's encoder).

I-JEPA (Assran et al., CVPR 2023) encodes images with a plain pre-norm ViT (Dosovitskiy et al. 2021) without a
class token; reference code ``src/models/vision_transformer.py:VisionTransformer`` in facebookresearch/ijepa.
This module keeps the reference parameter names one to one, so an official checkpoint's ``encoder`` or
``target_encoder`` state dict loads with ``strict=True``. The patch embedding is timm's ``PatchEmbed`` and the
blocks come from :mod:`jepaflow.layers.transformer` (timm blocks, the reference's norm and initialization).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field, model_validator
from timm.layers import PatchEmbed, lecun_normal_
from torch import Tensor

from jepaflow.fields import Blocks, DropRate, Heads, ImageSize, InitStd, MlpRatio, Width
from jepaflow.interfaces import Encoder, PluginConfig
from jepaflow.layers.pos_embed import sincos_pos_embed_2d
from jepaflow.layers.transformer import (
    encode_tokens,
    init_reference_weights,
    last_block_outputs,
    layer_norm,
    make_blocks,
)

#: size -> (embed_dim, depth, num_heads, mlp_ratio), as the reference's ``vit_tiny`` ... ``vit_giant``.
VIT_SIZES: dict[str, tuple[int, int, int, float]] = {
    "tiny": (192, 12, 3, 4.0),
    "small": (384, 12, 6, 4.0),
    "base": (768, 12, 12, 4.0),
    "large": (1024, 24, 16, 4.0),
    "huge": (1280, 32, 16, 4.0),
    "giant": (1408, 40, 16, 48 / 11),
}


class VisionTransformerEncoder(Encoder):
    """ViT encoder without class token, with fixed 2D sin-cos positions (I-JEPA's context/target encoder).

    Shapes: images ``(B, C, H, W)`` -> tokens ``(B, K, D)``. See :class:`jepaflow.interfaces.Encoder`.
    """

    capabilities: ClassVar[frozenset[str]] = frozenset(
        {"drop_patches", "intermediate_layers", "mask_token", "transformer_dims"}
    )

    class Config(PluginConfig):
        size: Literal["tiny", "small", "base", "large", "huge", "giant"] = Field(
            "base", description="reference ViT size (tiny/small/base/large/huge/giant)"
        )
        patch_size: int = Field(16, ge=1, le=1024, description="patch side in pixels")
        img_size: ImageSize = Field(224, description="side of the (square) training images in pixels")
        in_chans: int = Field(3, ge=1, le=64, description="image channels")
        embed_dim: Width | None = Field(None, ge=4, description="override the size's width (e.g. for CPU runs)")
        depth: Blocks | None = Field(None, description="override the size's number of blocks")
        num_heads: Heads | None = Field(None, description="override the size's attention heads")
        mlp_ratio: MlpRatio | None = Field(None, description="override the size's MLP hidden/width ratio")
        drop_path_rate: DropRate = Field(0.0, description="stochastic depth of the last block")
        init_std: InitStd = Field(0.02, description="std of the truncated-normal weight init")
        patch_embed_init: Literal["reference", "lecun_normal"] = Field(
            "reference",
            description="reference: the patch projection drawn like every layer (trunc_normal(init_std)); "
            "lecun_normal: std 1/sqrt(fan_in) (timm's jax-style ViT init), so that the content of small patches is "
            "not drowned by the position table at the start (not in I-JEPA: an option for small patches)",
        )

        def dims(self) -> tuple[int, int, int, float]:
            """``(embed_dim, depth, num_heads, mlp_ratio)``: the size's values with the overrides applied."""
            dim, depth, heads, ratio = VIT_SIZES[self.size]
            return (
                self.embed_dim if self.embed_dim is not None else dim,
                self.depth if self.depth is not None else depth,
                self.num_heads if self.num_heads is not None else heads,
                self.mlp_ratio if self.mlp_ratio is not None else ratio,
            )

        @model_validator(mode="after")
        def _check_dims(self) -> VisionTransformerEncoder.Config:
            if self.img_size % self.patch_size != 0:
                raise ValueError(
                    f"img_size ({self.img_size}) is not divisible by patch_size ({self.patch_size})"
                )
            dim, _, heads, _ = self.dims()
            if dim % heads != 0:
                raise ValueError(f"embed_dim ({dim}) is not divisible by num_heads ({heads})")
            if dim % 4 != 0:
                # two sin-cos halves (columns, rows), each made of sin and cos parts
                raise ValueError(
                    f"embed_dim ({dim}) must be divisible by 4 for the 2D sin-cos position table"
                )
            return self

    def __init__(self, config: Config | None = None):
        super().__init__()
        config = config if config is not None else self.Config()
        self.config = config
        dim, depth, heads, ratio = config.dims()
        self.embed_dim = dim
        self.depth = depth
        self.num_heads = heads
        self.mlp_ratio = ratio
        self.patch_size = config.patch_size
        self.in_chans = config.in_chans
        side = config.img_size // config.patch_size
        self.grid_size = (side, side)

        # timm's PatchEmbed: its only parameters are proj.weight/proj.bias, the reference's names. img_size=None:
        # any input divisible by the patch size is accepted (checked in embed_patches).
        self.patch_embed = PatchEmbed(
            img_size=None, patch_size=config.patch_size, in_chans=config.in_chans, embed_dim=dim
        )
        # A buffer, not a frozen Parameter as in the reference: same state-dict key, but optimizers and
        # weight-decay groups never see it.
        self.register_buffer(
            "pos_embed", sincos_pos_embed_2d(dim, self.grid_size).unsqueeze(0), persistent=True
        )
        self.blocks = make_blocks(dim, depth, heads, ratio, config.drop_path_rate)
        self.norm = layer_norm(dim)
        init_reference_weights(self, config.init_std)
        if config.patch_embed_init == "lecun_normal":
            # With the reference init a 4x4 grey patch (16 inputs) is projected to tokens of per-feature std about
            # 0.02 * sqrt(16) = 0.08, against 0.5 for the sin-cos table: 93% of a random encoder's token variance is
            # position (docs/results/small_scale_ijepa.md). 1/sqrt(fan_in) gives the content unit scale.
            lecun_normal_(self.patch_embed.proj.weight)
        # sin-cos tables of other grids, keyed by (grid, device, dtype): built once on the host, then reused
        self._pos_cache: dict[tuple, Tensor] = {}

    # --------------------------------------------------------------------------------------------------------
    def _pos_for_grid(self, grid_hw: tuple[int, int]) -> Tensor:
        """``(1, H*W, D)`` position table for a patch grid: the buffer for the configured grid (so a loaded
        checkpoint's table is used as is), else the exact sin-cos table of that grid, built once on the host
        and cached per device. The table keeps the buffer's dtype (float32), not the autocast dtype of the
        patch tokens, so the residual stream stays float32 under autocast as in the reference."""
        if grid_hw == self.grid_size:
            return self.pos_embed
        key = (grid_hw, self.pos_embed.device, self.pos_embed.dtype)
        table = self._pos_cache.get(key)
        if table is None:
            table = sincos_pos_embed_2d(
                self.embed_dim, grid_hw, dtype=self.pos_embed.dtype, device=self.pos_embed.device
            )[None]
            self._pos_cache[key] = table
        return table

    def embed_patches(self, images: Tensor) -> Tensor:
        """Patchify and add positions: ``(B, C, H, W) -> (B, N, D)``, ``N = (H/p) * (W/p)``."""
        H, W = images.shape[-2:]
        p = self.patch_size
        if H % p or W % p:
            raise ValueError(f"image size {H}x{W} is not divisible by the patch size {p}")
        x = self.patch_embed(images)
        return x + self._pos_for_grid((H // p, W // p))

    def forward(self, images: Tensor, keep: Tensor | None = None, keep_valid: Tensor | None = None) -> Tensor:
        """Encode the kept patches.

        Args:
            images: ``(B, C, H, W)``; any size divisible by the patch size (positions follow the input grid).
            keep: ``(B, K)`` int64 row-major patch indices, or None for all ``N`` patches. Positions are added
                before the gather, so kept tokens carry their place in the full grid (reference ``forward``:
                ``x + pos_embed`` then ``apply_masks``).
            keep_valid: ``(B, K)`` bool, False for padded entries of ``keep``; they are masked out as keys.
        Returns:
            ``(B, K, D)`` (``(B, N, D)`` without ``keep``), after the final LayerNorm.
        """
        return encode_tokens(self.embed_patches(images), self.blocks, self.norm, keep, keep_valid,
                             checkpoint=self.grad_checkpointing)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def forward_layers(self, images: Tensor, layers: int) -> list[Tensor]:
        """Outputs ``(B, N, D)`` of the last ``layers`` blocks, oldest first, before the final norm."""
        return last_block_outputs(self.embed_patches(images), self.blocks, layers)

    def forward_masked(self, images: Tensor, mask: Tensor, mask_token: Tensor) -> Tensor:
        """BEiT/data2vec input masking: every patch still enters the blocks, masked ones as ``mask_token``.

        Args:
            images: ``(B, C, H, W)``, any size divisible by the patch size.
            mask: ``(B, N)`` bool, True where the patch embedding is replaced.
            mask_token: ``(D,)`` learned embedding (owned by the objective).
        Returns:
            ``(B, N, D)`` after the final LayerNorm.

        The token replaces the patch embedding *before* the position embedding is added, so masked tokens still
        carry their place in the grid (BEiT, Bao et al. 2022, sec. 2.3; facebookresearch/data2vec_vision
        ``beit/modeling_cyclical.py:forward_features``: ``x * (1 - w) + mask_token * w`` then ``+ pos_embed``).
        """
        H, W = images.shape[-2:]
        p = self.patch_size
        if H % p or W % p:
            raise ValueError(f"image size {H}x{W} is not divisible by the patch size {p}")
        x = self.patch_embed(images)  # (B, N, D)
        if mask.shape != x.shape[:2]:
            raise ValueError(f"mask has shape {tuple(mask.shape)}, expected {tuple(x.shape[:2])} (B, N)")
        # torch.where keeps the graph to both the patch embedding and the token (gradients reach each where used)
        x = torch.where(mask.unsqueeze(-1), mask_token.to(x.dtype), x)
        x = x + self._pos_for_grid((H // p, W // p))
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def extra_repr(self) -> str:
        return f"grid_size={self.grid_size}, patch_size={self.patch_size}, embed_dim={self.embed_dim}"


# ------------------------------------------------------------------------------------------------------------
# Factories (timm style: one builder, one small function per size)
# ------------------------------------------------------------------------------------------------------------


def _build(size: str, **overrides) -> VisionTransformerEncoder:
    return VisionTransformerEncoder(VisionTransformerEncoder.Config(size=size, **overrides))


def vit_tiny(**overrides) -> VisionTransformerEncoder:
    """ViT-Ti: width 192, 12 blocks, 3 heads."""
    return _build("tiny", **overrides)


def vit_small(**overrides) -> VisionTransformerEncoder:
    """ViT-S: width 384, 12 blocks, 6 heads."""
    return _build("small", **overrides)


def vit_base(**overrides) -> VisionTransformerEncoder:
    """ViT-B: width 768, 12 blocks, 12 heads."""
    return _build("base", **overrides)


def vit_large(**overrides) -> VisionTransformerEncoder:
    """ViT-L: width 1024, 24 blocks, 16 heads."""
    return _build("large", **overrides)


def vit_huge(**overrides) -> VisionTransformerEncoder:
    """ViT-H: width 1280, 32 blocks, 16 heads."""
    return _build("huge", **overrides)


def vit_giant(**overrides) -> VisionTransformerEncoder:
    """ViT-g: width 1408, 40 blocks, 16 heads, MLP ratio 48/11."""
    return _build("giant", **overrides)


__all__ = [
    "VIT_SIZES",
    "VisionTransformerEncoder",
    "vit_base",
    "vit_giant",
    "vit_huge",
    "vit_large",
    "vit_small",
    "vit_tiny",
]
