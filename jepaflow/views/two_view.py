"""SimCLR/BYOL-style augmented views: random crop, flip, colour distortion, blur, solarization.

The pipeline of one view is SimCLR's (Chen et al., ICML 2020, appendix A; google-research/simclr
``data_util.py:preprocess_for_train``), with BYOL's per-view blur and solarization probabilities (Grill et al.,
NeurIPS 2020, appendix B, table 6; VICReg, Bardes et al. ICLR 2022, appendix C, uses BYOL's):

    RandomResizedCrop(size, scale) -> horizontal flip (p) -> colour jitter (p) -> grayscale (p)
    -> Gaussian blur (p of this view) -> solarize (p of this view) -> float in [0, 1] -> normalize.

The shared pieces -- :class:`ViewAugConfig` (the colour/blur/flip fields) and :func:`view_transform` (one view's
pipeline) -- are reused by :mod:`jepaflow.views.multicrop`.

One-channel images (e.g. Fashion-MNIST): the colour operations that need RGB -- saturation, hue and grayscale --
are skipped; brightness and contrast still apply (torchvision computes the contrast mean of a grey image directly).

Randomness: every random draw comes from torch's global generator (torchvision ``transforms.v2`` draws with
``torch.rand``/``torch.randint``/``torch.randperm``), which the engine seeds per item.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from pydantic import Field, field_validator, model_validator
from torch import Tensor
from torchvision.transforms import v2

from jepaflow.datasets.transforms import MatchChannels
from jepaflow.interfaces import PluginConfig, ViewSampler


class ViewAugConfig(PluginConfig):
    """Colour, blur, flip and solarization fields shared by the view samplers. Defaults: SimCLR, strength 1."""

    flip_p: float = Field(0.5, ge=0, le=1, description="probability of a horizontal flip (SimCLR/BYOL 0.5)")
    color_jitter_p: float = Field(0.8, ge=0, le=1, description="probability of colour jitter (SimCLR/BYOL 0.8)")
    brightness: float = Field(
        0.8, ge=0, le=10, description="colour jitter brightness (SimCLR 0.8 * s with s=1; BYOL/VICReg 0.4)"
    )
    contrast: float = Field(0.8, ge=0, le=10, description="colour jitter contrast (SimCLR 0.8 * s; BYOL/VICReg 0.4)")
    saturation: float = Field(
        0.8, ge=0, le=10, description="colour jitter saturation (SimCLR 0.8 * s; BYOL/VICReg 0.2); skipped for 1 channel"
    )
    hue: float = Field(
        0.2, ge=0, le=0.5, description="colour jitter hue (SimCLR 0.2 * s; BYOL/VICReg 0.1); skipped for 1 channel"
    )
    grayscale_p: float = Field(
        0.2, ge=0, le=1, description="probability of converting to grey (SimCLR/BYOL 0.2); skipped for 1 channel"
    )
    blur_p: tuple[float, ...] = Field(
        (0.5, 0.5),
        description="Gaussian blur probability of each view (1 value: all views); SimCLR 0.5 for both, "
        "BYOL/VICReg (1.0, 0.1)",
    )
    blur_sigma: tuple[float, float] = Field(
        (0.1, 2.0), description="range of the blur's standard deviation in pixels (SimCLR/BYOL (0.1, 2.0))"
    )
    blur_kernel_fraction: float = Field(
        0.1, gt=0, le=1, description="blur kernel side as a fraction of the view side, made odd, at least 3 "
        "(SimCLR/BYOL 10%: 23 px at 224)"
    )
    solarize_p: tuple[float, ...] = Field(
        (0.0, 0.0),
        description="solarization probability of each view (1 value: all views); SimCLR none, BYOL/VICReg "
        "(0.0, 0.2)",
    )

    @field_validator("blur_p", "solarize_p")
    @classmethod
    def _probabilities(cls, values: tuple[float, ...]) -> tuple[float, ...]:
        if not values:
            raise ValueError("give at least one probability")
        if any(not 0 <= p <= 1 for p in values):
            raise ValueError(f"probabilities must be in [0, 1] (got {values})")
        return values

    @field_validator("blur_sigma")
    @classmethod
    def _sigma_range(cls, sigma: tuple[float, float]) -> tuple[float, float]:
        if not 0 < sigma[0] <= sigma[1]:
            raise ValueError(f"blur_sigma must satisfy 0 < min <= max (got {sigma})")
        return sigma

    def check_per_view(self, num_views: int) -> None:
        """Raise ValueError unless ``blur_p`` and ``solarize_p`` have 1 or ``num_views`` values."""
        for name in ("blur_p", "solarize_p"):
            n = len(getattr(self, name))
            if n not in (1, num_views):
                raise ValueError(f"{name} has {n} values; give 1 (all views) or {num_views} (one per view)")

    def per_view(self, name: str, view: int) -> float:
        """The value of the per-view field ``name`` for view ``view`` (a single value applies to every view)."""
        values = getattr(self, name)
        return float(values[0] if len(values) == 1 else values[view])


def blur_kernel_size(size: int, fraction: float) -> int:
    """Blur kernel side for a ``size`` px view: ``int(fraction * size)``, made odd, at least 3 (224 -> 23)."""
    k = int(fraction * size)
    k += 1 - k % 2
    return max(k, 3)


def view_transform(
    cfg: ViewAugConfig,
    *,
    size: int,
    scale: tuple[float, float],
    blur_p: float,
    solarize_p: float,
    channels: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> v2.Compose:
    """The augmentation pipeline of one view (see the module docstring for the order of the steps).

    Args:
        cfg: colour/blur/flip settings.
        size: side of the square output view in pixels.
        scale: RandomResizedCrop area range.
        blur_p, solarize_p: this view's probabilities.
        channels: channels of the output (1: the RGB-only colour steps are skipped).
        mean, std: normalization (1 value or one per channel).
    Returns:
        a callable: PIL image or ``(C, H, W)`` uint8 tensor -> ``(channels, size, size)`` float32 tensor.
    """
    rgb = channels == 3
    steps: list[torch.nn.Module] = [
        # Crop and flip before the float conversion: resampling uint8 (or PIL) is cheaper than float32.
        v2.RandomResizedCrop(size, scale=tuple(scale), antialias=True),
        v2.RandomHorizontalFlip(p=cfg.flip_p),
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        MatchChannels(channels),
    ]
    jitter = dict(brightness=cfg.brightness, contrast=cfg.contrast,
                  saturation=cfg.saturation if rgb else 0.0, hue=cfg.hue if rgb else 0.0)
    if cfg.color_jitter_p > 0 and any(v > 0 for v in jitter.values()):
        steps.append(v2.RandomApply([v2.ColorJitter(**jitter)], p=cfg.color_jitter_p))
    if rgb and cfg.grayscale_p > 0:
        steps.append(v2.RandomGrayscale(p=cfg.grayscale_p))
    if blur_p > 0:
        kernel = blur_kernel_size(size, cfg.blur_kernel_fraction)
        steps.append(v2.RandomApply([v2.GaussianBlur(kernel, sigma=tuple(cfg.blur_sigma))], p=blur_p))
    if solarize_p > 0:
        # On [0, 1] floats: x -> 1 - x where x >= 0.5 (BYOL's solarization, threshold 128 of 255).
        steps.append(v2.RandomSolarize(threshold=0.5, p=solarize_p))
    steps += [v2.Normalize(list(mean), list(std)), v2.ToPureTensor()]
    return v2.Compose(steps)


class TwoViewAugmentation(ViewSampler):
    """``num_views`` (default 2) independently augmented full-size views of an image (SimCLR, BYOL, VICReg).

    Each view is a RandomResizedCrop at the data set's ``image_size`` followed by flip, colour jitter, grayscale,
    blur and solarization (view ``i`` uses ``blur_p[i]`` and ``solarize_p[i]``); defaults are SimCLR's ImageNet
    pipeline (Chen et al. 2020, appendix A). For 1-channel images saturation, hue and grayscale are skipped.
    Constructed as ``TwoViewAugmentation(config, image_size=, channels=, mean=, std=)``.
    """

    class Config(ViewAugConfig):
        num_views: int = Field(2, ge=1, le=64, description="views per image (2 for SimCLR, BYOL, VICReg)")
        crop_scale: tuple[float, float] = Field(
            (0.08, 1.0), description="RandomResizedCrop area range (SimCLR/BYOL/VICReg (0.08, 1.0))"
        )

        @model_validator(mode="after")
        def _check(self) -> TwoViewAugmentation.Config:
            self.check_per_view(self.num_views)
            lo, hi = self.crop_scale
            if not 0 < lo <= hi <= 1:
                raise ValueError(f"crop_scale must satisfy 0 < min <= max <= 1 (got {self.crop_scale})")
            return self

    def __init__(self, config: Config | None = None, *, image_size: int, channels: int,
                 mean: Sequence[float], std: Sequence[float]):
        config = config if config is not None else self.Config()
        self.config = config
        self.num_views = config.num_views
        self.image_size = image_size
        self.channels = channels
        self.transforms = [
            view_transform(config, size=image_size, scale=config.crop_scale, blur_p=config.per_view("blur_p", i),
                           solarize_p=config.per_view("solarize_p", i), channels=channels, mean=mean, std=std)
            for i in range(config.num_views)
        ]

    def __call__(self, image: Any) -> list[Tensor]:
        """PIL image or ``(C, H, W)`` uint8 tensor -> ``num_views`` tensors ``(channels, image_size, image_size)``."""
        return [t(image) for t in self.transforms]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_views={self.num_views}, image_size={self.image_size})"


__all__ = ["TwoViewAugmentation", "ViewAugConfig", "blur_kernel_size", "view_transform"]
