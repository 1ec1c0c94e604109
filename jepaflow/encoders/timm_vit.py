"""Any timm VisionTransformer-family model as a jepaflow encoder (patch tokens, no class token).

timm's ``VisionTransformer`` (``timm/models/vision_transformer.py``) covers many variants through its
constructor (qk-norm, layer scale, pre-norm, SwiGLU MLPs, other norms...). This plugin builds one by name with
``num_classes=0, global_pool="", class_token=False, reg_tokens=0`` -- the shape of I-JEPA's encoder (Assran et
al., CVPR 2023, sec. 3: a ViT over patch tokens only) -- and runs it token-wise so that a masker's context
indices can be gathered before the blocks, as the reference ``VisionTransformer.forward`` does
(facebookresearch/ijepa ``src/models/vision_transformer.py``: positions added, then ``apply_masks``).

Differences from the ``vit`` plugin: position embeddings are timm's (learned, per ``pos_embed``), weights are
timm's initialization, and parameter names are timm's under ``model.``. Nothing is ever downloaded
(``pretrained=False``); ``checkpoint`` loads a local file of timm weights instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import timm
from pydantic import Field, field_validator
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor

from jepaflow.errors import JepaflowError
from jepaflow.fields import DropRate, ImageSize
from jepaflow.interfaces import Encoder, PluginConfig
from jepaflow.layers.transformer import encode_tokens, last_block_outputs

#: constructor arguments this plugin sets itself; ``model_kwargs`` may not override them.
_FORCED_KWARGS: dict[str, Any] = {"num_classes": 0, "global_pool": "", "class_token": False, "reg_tokens": 0}
_OWN_FIELDS = ("pretrained", "img_size", "in_chans", "drop_path_rate")


def build_timm_vit(
    model_name: str, img_size: int, in_chans: int, drop_path_rate: float, model_kwargs: dict[str, Any]
) -> VisionTransformer:
    """``timm.create_model`` for a patch-token encoder, or a :class:`JepaflowError` saying why it cannot be."""
    if not timm.is_model(model_name):
        raise JepaflowError(
            f"timm has no model named {model_name!r}",
            "pick a name from timm.list_models('vit_*'), e.g. vit_small_patch16_224",
        )
    clash = sorted(set(model_kwargs) & (set(_FORCED_KWARGS) | set(_OWN_FIELDS)))
    if clash:
        raise JepaflowError(
            f"encoder.model_kwargs may not set {', '.join(clash)}",
            "img_size, in_chans and drop_path_rate are encoder fields of their own; the class token, registers, "
            "pooling and head are fixed by this plugin (patch tokens only) and nothing is downloaded",
        )
    try:
        model = timm.create_model(
            model_name,
            pretrained=False,
            img_size=img_size,
            in_chans=in_chans,
            drop_path_rate=drop_path_rate,
            **_FORCED_KWARGS,
            **model_kwargs,
        )
    except (TypeError, ValueError, AssertionError, RuntimeError, KeyError) as exc:
        # Non-ViT families reject class_token/reg_tokens (TypeError); inconsistent sizes trip asserts.
        raise JepaflowError(
            f"timm could not build {model_name!r} as a patch-token ViT encoder ({type(exc).__name__}: {exc})",
            "use a timm VisionTransformer model (vit_*, deit3_*, ...) and check encoder.model_kwargs",
        ) from None
    if not isinstance(model, VisionTransformer):
        raise JepaflowError(
            f"timm model {model_name!r} is a {type(model).__name__}, not a VisionTransformer",
            "use a timm VisionTransformer model (vit_*, deit3_*, ...), or the 'vit' encoder",
        )
    return model


def read_timm_state_dict(path: Path) -> dict[str, Tensor]:
    """Tensors of a local timm weight file (``.safetensors`` or a ``torch.save`` file; ``state_dict``/``model``
    wrappers and ``module.`` prefixes removed), read by :func:`jepaflow.checkpoints.read_state_dict`: never
    executing pickled code, refusing non-finite weights."""
    from jepaflow.checkpoints import read_state_dict

    return read_state_dict(path, what="timm weight file (encoder.checkpoint)")


def adapt_timm_state_dict(state: dict[str, Tensor], model: VisionTransformer) -> dict[str, Tensor]:
    """Fit a timm ViT state dict to this plugin's model (no class token, no registers, no head).

    The classifier (``head``, ``fc_norm``, ``attn_pool``) is dropped; so are the class and register tokens and,
    when the checkpoint's position table has rows for them (timm's ``no_embed_class=False`` layout), those
    rows. A position table for another grid is resized by timm's ``resample_abs_pos_embed`` with its defaults
    (bicubic, antialiased), so the table equals the one timm itself loads into a model of this grid.
    """
    out = {k: v for k, v in state.items() if not k.startswith(("head.", "fc_norm.", "attn_pool."))}
    n_prefix = 0
    if "cls_token" in out:
        n_prefix += out.pop("cls_token").shape[1]
    if "reg_token" in out:
        n_prefix += out.pop("reg_token").shape[1]
    pos = out.get("pos_embed")
    if pos is not None and model.pos_embed is not None:
        if not model.no_embed_class:
            pos = pos[:, n_prefix:]  # rows of the class/register tokens come first
        old = int(round(pos.shape[1] ** 0.5))
        if old * old != pos.shape[1]:
            raise JepaflowError(f"the checkpoint's pos_embed ({pos.shape[1]} rows) is not a square grid")
        out["pos_embed"] = resample_abs_pos_embed(
            pos, new_size=list(model.patch_embed.grid_size), old_size=[old, old], num_prefix_tokens=0
        )
    return out


class TimmViTEncoder(Encoder):
    """A timm VisionTransformer run as a patch-token encoder: ``(B, C, H, W) -> (B, K, D)``.

    See :class:`jepaflow.interfaces.Encoder` for the forward contract. The timm model is ``self.model``.
    """

    # no mask_token: timm's patch embedding has no hook to swap embeddings before the positions are added
    capabilities: ClassVar[frozenset[str]] = frozenset({"drop_patches", "intermediate_layers", "transformer_dims"})

    class Config(PluginConfig):
        model_name: str = Field(
            "vit_base_patch16_224", description="timm model name (a VisionTransformer: vit_*, deit3_*, ...)"
        )
        img_size: ImageSize = Field(224, description="side of the (square) training images in pixels")
        in_chans: int = Field(3, ge=1, le=64, description="image channels")
        checkpoint: str | None = Field(
            None, description="local file of timm weights to start from (nothing is ever downloaded)"
        )
        drop_path_rate: DropRate = Field(0.0, description="stochastic depth of the last block")
        model_kwargs: dict[str, Any] = Field(
            default_factory=dict,
            description="extra timm.create_model arguments (patch_size, embed_dim, depth, num_heads, ...)",
        )

        @field_validator("model_name")
        @classmethod
        def _known_to_timm(cls, name: str) -> str:
            # Cheap (a registry lookup, nothing is built), and it lets the recipe validator report the path.
            if not timm.is_model(name):
                raise ValueError(f"timm has no model named {name!r} (see timm.list_models('vit_*'))")
            return name

    def __init__(self, config: Config | None = None):
        super().__init__()
        config = config if config is not None else self.Config()
        self.config = config
        self.model = build_timm_vit(
            config.model_name, config.img_size, config.in_chans, config.drop_path_rate, dict(config.model_kwargs)
        )
        patch = tuple(self.model.patch_embed.patch_size)
        if patch[0] != patch[1]:
            raise JepaflowError(f"{config.model_name}: non-square patches {patch} are not supported")
        self.patch_size = int(patch[0])
        self.grid_size = tuple(int(g) for g in self.model.patch_embed.grid_size)
        self.embed_dim = int(self.model.embed_dim)
        self.in_chans = config.in_chans
        self.depth = len(self.model.blocks)
        self.num_heads = int(getattr(self.model.blocks[0].attn, "num_heads", 0)) or None
        if config.checkpoint is not None:
            from jepaflow.checkpoints import load_state_dict_checked

            path = Path(config.checkpoint).expanduser()
            state = adapt_timm_state_dict(read_timm_state_dict(path), self.model)
            load_state_dict_checked(self.model, state, str(path))

    def embed_patches(self, images: Tensor) -> Tensor:
        """Patchify, add positions, pre-norm: ``(B, C, H, W) -> (B, N, D)``.

        timm's ``patch_drop`` is not applied: which tokens are kept is the masker's decision (``keep``)."""
        x = self.model.patch_embed(images)  # (B, N, D), or (B, H, W, D) with dynamic_img_size
        x = self.model._pos_embed(x)  # adds (or resamples) the position table, flattens to (B, N, D)
        return self.model.norm_pre(x)

    def forward(self, images: Tensor, keep: Tensor | None = None, keep_valid: Tensor | None = None) -> Tensor:
        """Encode the kept patches.

        Args:
            images: ``(B, C, H, W)``.
            keep: ``(B, K)`` int64 row-major patch indices, or None for all ``N`` patches. Positions are added
                before the gather, so kept tokens keep their place in the full grid.
            keep_valid: ``(B, K)`` bool, False for padded entries of ``keep``; they are masked out as keys.
        Returns:
            ``(B, K, D)`` (``(B, N, D)`` without ``keep``), after the final norm.
        """
        return encode_tokens(self.embed_patches(images), self.model.blocks, self.model.norm, keep, keep_valid,
                             checkpoint=self.grad_checkpointing)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def forward_layers(self, images: Tensor, layers: int) -> list[Tensor]:
        """Outputs ``(B, N, D)`` of the last ``layers`` blocks, oldest first, before the final norm."""
        return last_block_outputs(self.embed_patches(images), self.model.blocks, layers)

    def extra_repr(self) -> str:
        return f"model_name={self.config.model_name!r}, grid_size={self.grid_size}, embed_dim={self.embed_dim}"


__all__ = ["TimmViTEncoder", "adapt_timm_state_dict", "build_timm_vit", "read_timm_state_dict"]
