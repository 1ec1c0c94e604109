"""Any timm convolutional network as a jepaflow encoder: its last feature map read as tokens.

The invariance baselines (SimCLR, BYOL, VICReg) were published with ResNet-50 backbones (Chen et al. 2020;
Grill et al. 2020; Bardes et al. 2022). This plugin builds a timm CNN by name without its classifier or pooling
(``num_classes=0, global_pool=""``) and returns ``forward_features``' last map ``(B, C, h, w)`` as ``h * w``
tokens of width ``C`` (``(B, h*w, C)``), so that :meth:`Encoder.pool` -- the mean over tokens -- is the global
average pooling those papers evaluate.

A CNN has no patch tokens to drop, so masked methods (I-JEPA, MAE, data2vec) cannot use it: ``keep`` must be
None. ``grid_size`` is the feature map's size at ``img_size`` and ``patch_size`` the network's total stride.
Small images give small maps: a ResNet-18 (stride 32) on 28 px Fashion-MNIST gives a 1x1 map (``grid_size
(1, 1)``, one token), which is fine for the invariance methods, which only use the pooled features.

Nothing is downloaded (``pretrained=False``); ``checkpoint`` loads a local file of timm weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import timm
import torch
from pydantic import Field, field_validator
from torch import Tensor, nn

from jepaflow.errors import JepaflowError
from jepaflow.fields import ImageSize
from jepaflow.interfaces import Encoder, PluginConfig

#: ``timm.create_model`` arguments this plugin sets itself; ``model_kwargs`` may not override them.
_FORCED_KWARGS: tuple[str, ...] = ("pretrained", "num_classes", "global_pool", "in_chans")

NO_MASKING = "a CNN encoder cannot drop patches; use a ViT encoder for masked methods"


def build_timm_cnn(model_name: str, in_chans: int, model_kwargs: dict[str, Any]) -> nn.Module:
    """``timm.create_model(model_name, pretrained=False, num_classes=0, global_pool="", in_chans=...)``, or a
    :class:`JepaflowError` saying why it cannot be built."""
    if not timm.is_model(model_name):
        raise JepaflowError(f"timm has no model named {model_name!r}",
                            "pick a name from timm.list_models('resnet*'), e.g. resnet50")
    clash = sorted(set(model_kwargs) & set(_FORCED_KWARGS))
    if clash:
        raise JepaflowError(
            f"encoder.model_kwargs may not set {', '.join(clash)}",
            "in_chans is an encoder field; the classifier and pooling are removed by this plugin and nothing is "
            "downloaded",
        )
    try:
        return timm.create_model(model_name, pretrained=False, num_classes=0, global_pool="", in_chans=in_chans,
                                 **model_kwargs)
    except (TypeError, ValueError, AssertionError, RuntimeError, KeyError) as exc:
        raise JepaflowError(
            f"timm could not build {model_name!r} ({type(exc).__name__}: {exc})", "check encoder.model_kwargs"
        ) from None


def feature_map_layout(model: nn.Module, in_chans: int, img_size: int, num_features: int) -> tuple[int, int, bool]:
    """``(h, w, channels_last)`` of ``model.forward_features`` on a ``(1, in_chans, img_size, img_size)`` input.

    Found by running a zero image once (eval mode, no grad; the training flag is restored): a CNN's output size
    depends on every padding and stride, which the nominal reduction does not always predict (28 px through a
    ResNet gives 14, 7, 4, 2, 1). Raises :class:`JepaflowError` when the output is not a 2-d feature map.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model.forward_features(torch.zeros(1, in_chans, img_size, img_size))
    except (RuntimeError, AssertionError, ValueError) as exc:
        raise JepaflowError(
            f"the model cannot encode {img_size} px images ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})",
            "use larger images (encoder.img_size) or a network with less downsampling",
        ) from None
    finally:
        model.train(was_training)
    if out.ndim != 4:
        raise JepaflowError(
            f"forward_features returns a {out.ndim}-d tensor {tuple(out.shape)}, not a (B, C, h, w) feature map",
            "timm_cnn is for convolutional networks; use the timm_vit encoder for vision transformers",
        )
    if out.shape[1] == num_features:
        return int(out.shape[2]), int(out.shape[3]), False
    if out.shape[3] == num_features:  # a few timm families (e.g. some hybrids) return NHWC maps
        return int(out.shape[1]), int(out.shape[2]), True
    raise JepaflowError(f"cannot find the {num_features} channels in the feature map {tuple(out.shape)}")


def feature_map_to_tokens(features: Tensor, channels_last: bool = False) -> Tensor:
    """``(B, C, h, w)`` (or ``(B, h, w, C)`` when ``channels_last``) -> ``(B, h*w, C)``, row-major positions."""
    if channels_last:
        return features.flatten(1, 2)
    return features.flatten(2).transpose(1, 2)


class TimmCNNEncoder(Encoder):
    """A timm CNN (resnet18, resnet50, ...) as an encoder: ``(B, C, H, W) -> (B, h*w, C_out)`` feature-map tokens.

    ``pool`` (mean over tokens) is the global average pooling of the last feature map. No masking: ``keep`` must
    be None. A ResNet-18 on 28 px Fashion-MNIST gives a 1x1 map (one token). The timm model is ``self.model``.
    """

    capabilities: ClassVar[frozenset[str]] = frozenset()  # whole images in, pooled features out

    class Config(PluginConfig):
        model_name: str = Field("resnet50", description="timm CNN name (resnet18, resnet50, convnext_tiny, ...)")
        img_size: ImageSize = Field(224, description="side of the (square) training images in pixels (sets "
                              "grid_size; a CNN accepts other sizes too)")
        in_chans: int = Field(3, ge=1, le=64, description="image channels")
        checkpoint: str | None = Field(
            None, description="local file of timm weights to start from (nothing is ever downloaded)"
        )
        model_kwargs: dict[str, Any] = Field(
            default_factory=dict, description="extra timm.create_model arguments (e.g. drop_path_rate, "
            "zero_init_last)"
        )

        @field_validator("model_name")
        @classmethod
        def _known_to_timm(cls, name: str) -> str:
            # A registry lookup only (nothing is built), so that the recipe validator reports the path.
            if not timm.is_model(name):
                raise ValueError(f"timm has no model named {name!r} (see timm.list_models('resnet*'))")
            return name

    def __init__(self, config: Config | None = None):
        super().__init__()
        config = config if config is not None else self.Config()
        self.config = config
        self.model = build_timm_cnn(config.model_name, config.in_chans, dict(config.model_kwargs))
        if config.checkpoint is not None:
            self._load_checkpoint(Path(config.checkpoint).expanduser())
        self.embed_dim = int(self.model.num_features)
        self.in_chans = config.in_chans
        h, w, self._channels_last = feature_map_layout(self.model, config.in_chans, config.img_size,
                                                       self.embed_dim)
        self.grid_size = (h, w)
        feature_info = getattr(self.model, "feature_info", None)
        if feature_info:
            self.patch_size = int(feature_info[-1]["reduction"])
        else:
            self.patch_size = max(1, config.img_size // max(h, w))

    def _load_checkpoint(self, path: Path) -> None:
        from jepaflow.checkpoints import load_state_dict_checked
        from jepaflow.encoders.timm_vit import read_timm_state_dict

        state = read_timm_state_dict(path)
        # The classifier (timm's pretrained_cfg names it: "fc" for ResNets) is not part of this encoder.
        classifier = self.model.pretrained_cfg.get("classifier") or "fc"
        heads = (classifier,) if isinstance(classifier, str) else tuple(classifier)
        state = {k: v for k, v in state.items() if not k.startswith(tuple(f"{h}." for h in heads))}
        load_state_dict_checked(self.model, state, str(path))

    def forward(self, images: Tensor, keep: Tensor | None = None, keep_valid: Tensor | None = None) -> Tensor:
        """Feature-map tokens.

        Args:
            images: ``(B, C, H, W)``.
            keep: must be None (a CNN sees the whole image); anything else raises ValueError.
            keep_valid: ignored (only meaningful with ``keep``).
        Returns:
            ``(B, h*w, D)`` tokens of the last feature map (``D = embed_dim``), row-major positions. ``(h, w)``
            is ``grid_size`` at ``img_size`` and follows the input size otherwise.
        """
        if keep is not None:
            raise ValueError(NO_MASKING)
        return feature_map_to_tokens(self.model.forward_features(images), self._channels_last)

    def extra_repr(self) -> str:
        return f"model_name={self.config.model_name!r}, grid_size={self.grid_size}, embed_dim={self.embed_dim}"


__all__ = ["NO_MASKING", "TimmCNNEncoder", "build_timm_cnn", "feature_map_layout", "feature_map_to_tokens"]
