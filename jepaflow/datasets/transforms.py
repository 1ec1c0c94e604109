"""Image transforms shared by the data set plugins, and the config fields they all carry.

The pretraining transform is I-JEPA's (Assran et al., CVPR 2023, section 4 and appendix A.1; reference code
``src/transforms.py:make_transforms``): a RandomResizedCrop with scale (0.3, 1.0), no horizontal flip, no colour
distortion, then normalization. Both extras exist in the reference code behind flags that are off for every
published I-JEPA config; they are kept here as opt-in fields.

Every transform accepts a PIL image or a ``(C, H, W)`` uint8 tensor and returns a ``(C, H, W)`` float32 tensor,
normalized. Randomness is drawn from torch's global generator only (no ``random``, no numpy), so that the
engine's ``torch.manual_seed`` around each item makes the crops reproducible.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import Field, model_validator
from torch import Tensor
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from jepaflow.fields import ImageSize
from jepaflow.interfaces import PluginConfig

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: standard evaluation ratio between the centre crop and the resized short side (224 / 256)
EVAL_CROP_RATIO = 0.875


class MatchChannels(torch.nn.Module):
    """``(C, H, W)`` float -> ``(channels, H, W)``: repeats a grey channel or averages colour to grey
    (ITU-R 601 luma weights, like PIL's ``convert("L")``). ``channels=None`` leaves the image alone."""

    def __init__(self, channels: int | None):
        super().__init__()
        self.channels = channels

    def forward(self, image: Tensor) -> Tensor:
        c = image.shape[-3]
        if self.channels is None or c == self.channels:
            return image
        if c == 1:
            return image.expand(*image.shape[:-3], self.channels, *image.shape[-2:]).contiguous()
        if self.channels == 1 and c == 3:
            return TF.rgb_to_grayscale(image, num_output_channels=1)
        raise ValueError(f"cannot convert a {c}-channel image to {self.channels} channels")


class ToFloatImage(torch.nn.Module):
    """PIL image or ``(C, H, W)`` tensor -> ``(channels, H, W)`` float32 in [0, 1].

    ``v2.ToImage``, ``v2.ToDtype(torch.float32, scale=True)`` and :class:`MatchChannels` in one step, with the
    same arithmetic (uint8 is cast, then multiplied by 1/255): on 28-px images the dispatch overhead of separate
    v2 steps costs more than the work, and the DataLoader's per-item cost bounds a small model's speed.
    """

    def __init__(self, channels: int | None):
        super().__init__()
        self.match = MatchChannels(channels)

    def forward(self, image: Any) -> Tensor:
        if not isinstance(image, Tensor):
            image = TF.pil_to_tensor(image)  # what v2.ToImage does with a PIL image
        image = image.as_subclass(Tensor)  # a plain tensor (tv_tensors subclasses dispatch slower)
        if image.dtype == torch.uint8:
            image = image.to(torch.float32).mul_(1.0 / 255)
        else:
            image = TF.to_dtype(image, torch.float32, scale=True)
        return self.match(image)


class NormalizeImage(torch.nn.Module):
    """``(C, H, W)`` float -> ``(x - mean) / std`` per channel, as ``v2.Normalize`` computes it, with the mean and
    std tensors made once instead of per call."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.mean = torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def forward(self, image: Tensor) -> Tensor:
        return image.sub(self.mean).div_(self.std)


class ResizeForEval(torch.nn.Module):
    """Resize the short side to ``image_size / crop_ratio`` (the 256-for-224 convention), except for images
    whose short side already equals ``image_size`` (small data sets stored at their final size), which are left
    untouched so that the following centre crop keeps every pixel."""

    def __init__(self, image_size: int, crop_ratio: float = EVAL_CROP_RATIO):
        super().__init__()
        self.image_size = image_size
        self.resize_to = int(math.floor(image_size / crop_ratio + 0.5))

    def forward(self, image):
        h, w = TF.get_size(image)
        if min(h, w) == self.image_size:
            return image
        return TF.resize(image, [self.resize_to], interpolation=v2.InterpolationMode.BILINEAR, antialias=True)


def _color_distortion(strength: float) -> list[torch.nn.Module]:
    # The reference code's optional colour distortion (SimCLR's recipe): jitter with p=0.8, greyscale with p=0.2.
    s = strength
    return [
        v2.RandomApply([v2.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)], p=0.8),
        v2.RandomGrayscale(p=0.2),
    ]


def pretrain_transform(
    image_size: int,
    crop_scale: tuple[float, float] = (0.3, 1.0),
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
    horizontal_flip: bool = False,
    color_jitter: float = 0.0,
    channels: int | None = None,
) -> v2.Compose:
    """I-JEPA's pretraining transform: RandomResizedCrop(image_size, scale=crop_scale) -> float -> normalize.

    Args:
        image_size: side of the square output.
        crop_scale: area fraction range of the random crop (I-JEPA: (0.3, 1.0)).
        mean, std: per-channel normalization (1 value broadcasts over every channel).
        horizontal_flip: add a random horizontal flip (off in I-JEPA).
        color_jitter: strength of the reference code's optional colour distortion; 0 turns it off (I-JEPA).
            Needs 3 channels.
        channels: convert the output to this many channels (grey <-> RGB) before the colour steps.

    Returns a callable: PIL image or ``(C, H, W)`` uint8 tensor -> ``(channels, image_size, image_size)`` float32.
    """
    steps: list[torch.nn.Module] = [
        # Crop before the dtype conversion: resampling uint8 (or PIL) is cheaper than float32.
        v2.RandomResizedCrop(image_size, scale=tuple(crop_scale), antialias=True),
    ]
    if horizontal_flip:
        steps.append(v2.RandomHorizontalFlip())
    steps.append(ToFloatImage(channels))
    if color_jitter > 0:
        steps += _color_distortion(color_jitter)
    steps.append(NormalizeImage(tuple(mean), tuple(std)))
    return v2.Compose(steps)


def eval_transform(
    image_size: int,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
    crop_ratio: float = EVAL_CROP_RATIO,
    channels: int | None = None,
) -> v2.Compose:
    """Deterministic evaluation transform: resize the short side to ``image_size / crop_ratio`` (identity when
    it already is ``image_size``), centre crop ``image_size``, float, normalize.

    Returns a callable: PIL image or ``(C, H, W)`` uint8 tensor -> ``(channels, image_size, image_size)`` float32.
    """
    return v2.Compose(
        [
            ResizeForEval(image_size, crop_ratio),
            v2.CenterCrop(image_size),
            ToFloatImage(channels),
            NormalizeImage(tuple(mean), tuple(std)),
        ]
    )


class ImageDataConfig(PluginConfig):
    """Fields every image data set plugin shares (subclasses override the defaults).

    ``image_size`` and ``channels`` keep these names on purpose: the recipe validator checks them against the
    encoder's ``img_size`` / ``in_chans``.
    """

    image_size: ImageSize = Field(224, description="side of the square images fed to the encoder")
    channels: int = Field(3, description="image channels fed to the encoder (1: grey, 3: RGB)")
    mean: tuple[float, ...] = Field(IMAGENET_MEAN, description="per-channel normalization mean (1 value or C)")
    std: tuple[float, ...] = Field(IMAGENET_STD, description="per-channel normalization std (1 value or C)")
    crop_scale: tuple[float, float] = Field((0.3, 1.0), description="RandomResizedCrop area range (pretraining)")
    horizontal_flip: bool = Field(False, description="random horizontal flip when pretraining (off in I-JEPA)")
    color_jitter: float = Field(
        0.0, ge=0, le=2.5, description="colour distortion strength when pretraining, 0 = off (off in I-JEPA); RGB only"
    )

    @model_validator(mode="after")
    def _check(self) -> ImageDataConfig:
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3 (got {self.channels})")
        for name in ("mean", "std"):
            n = len(getattr(self, name))
            if n not in (1, self.channels):
                raise ValueError(f"{name} has {n} values; give 1 or {self.channels} (one per channel)")
        if not all(0 <= m <= 1 for m in self.mean):
            raise ValueError(f"mean values must be in [0, 1]: pixels are scaled to [0, 1] before normalizing "
                             f"(got {self.mean})")
        if not all(1e-3 <= s <= 10 for s in self.std):
            raise ValueError(f"std values must be in [0.001, 10] (got {self.std})")
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < min <= max <= 1 (got {self.crop_scale})")
        if self.color_jitter > 0 and self.channels != 3:
            raise ValueError("color_jitter needs channels=3")
        return self

    def make_transform(self, augment: bool) -> v2.Compose:
        """The pretraining transform when ``augment`` is True, else the deterministic evaluation transform."""
        if augment:
            return pretrain_transform(
                self.image_size,
                crop_scale=self.crop_scale,
                mean=self.mean,
                std=self.std,
                horizontal_flip=self.horizontal_flip,
                color_jitter=self.color_jitter,
                channels=self.channels,
            )
        return eval_transform(self.image_size, mean=self.mean, std=self.std, channels=self.channels)


def check_split(split: str) -> str:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test' (got {split!r})")
    return split


def resize_stack(images: Tensor, size: int, chunk: int = 8192) -> Tensor:
    """Resize a stack of uint8 images ``(N, C, H, W)`` to ``(N, C, size, size)`` with bilinear interpolation
    (antialiased when shrinking), rounding back to uint8. Used once at load time by the in-memory data sets, so
    that ``__getitem__`` only crops. Chunked to bound the float32 working memory."""
    if images.shape[-2:] == (size, size):
        return images
    out = torch.empty(*images.shape[:2], size, size, dtype=torch.uint8)
    for start in range(0, images.shape[0], chunk):
        x = images[start : start + chunk].float()
        y = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                                            antialias=size < max(images.shape[-2:]))
        out[start : start + chunk] = y.round_().clamp_(0, 255).to(torch.uint8)
    return out
