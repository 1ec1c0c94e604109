"""Multi-crop views: a few large "global" crops and several small "local" crops of each image.

The multi-crop strategy of SwAV (Caron et al., NeurIPS 2020, sec. 3.2) and DINO (Caron et al., ICCV 2021, sec. 3.1
and appendix; facebookresearch/dino ``main_dino.py:DataAugmentationDINO``: 2 global crops at 224 with scale
(0.4, 1.0), several local crops at 96 with scale (0.05, 0.4)), also used by LeJEPA (Balestriero & LeCun 2025,
arXiv 2511.08544, global and local views of one image). Defaults here: 2 global crops with scale (0.3, 1.0) and
6 local crops of 96 px with scale (0.05, 0.3); colour jitter, grayscale, blur (p 0.5) and solarization (p 0.2) on
every view, as in the augmentation of LeJEPA's minimal example (rbalestr-lab/lejepa ``MINIMAL.md``). Every crop
then goes through the same colour/blur/flip pipeline as :mod:`jepaflow.views.two_view`
(:func:`jepaflow.views.two_view.view_transform`).

Order of the returned views: ``views[:global_crops]`` are the global crops (at the data set's ``image_size``),
``views[global_crops:]`` the local crops (at ``local_size``). The engine's ``Batch.images`` is the first global
crop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import Field, model_validator
from torch import Tensor

from jepaflow.fields import ImageSize
from jepaflow.interfaces import ViewSampler
from jepaflow.views.two_view import ViewAugConfig, view_transform


def _check_scale(name: str, scale: tuple[float, float]) -> None:
    lo, hi = scale
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"{name} must satisfy 0 < min <= max <= 1 (got {scale})")


class MultiCropAugmentation(ViewSampler):
    """``global_crops`` crops at the image size plus ``local_crops`` small crops at ``local_size`` (DINO, LeJEPA).

    ``num_views = global_crops + local_crops``; ``views[:global_crops]`` are the global crops, the rest local.
    View ``i`` uses ``blur_p[i]`` and ``solarize_p[i]`` (a single value applies to every view). For 28 px
    Fashion-MNIST with 4 px patches, ``local_size`` 12 or 16 is reasonable.
    Constructed as ``MultiCropAugmentation(config, image_size=, channels=, mean=, std=)``.
    """

    class Config(ViewAugConfig):
        global_crops: int = Field(2, ge=1, le=64, description="number of global crops, at the data set's image_size "
                                  "(DINO: 2)")
        global_scale: tuple[float, float] = Field(
            (0.3, 1.0), description="area range of the global crops (I-JEPA's crop range; DINO (0.4, 1.0))"
        )
        local_crops: int = Field(6, ge=0, le=64, description="number of local crops (DINO: 6 to 10)")
        local_size: ImageSize = Field(
            96, description="side of the local crops in pixels (DINO: 96 for 224 images); must be a "
            "multiple of the encoder's patch size (a ViT embeds every view), which this plugin cannot check",
        )
        local_scale: tuple[float, float] = Field(
            (0.05, 0.3), description="area range of the local crops (DINO (0.05, 0.4))"
        )
        blur_p: tuple[float, ...] = Field(
            (0.5,), description="Gaussian blur probability of each view, globals first (1 value: all views); "
            "LeJEPA's minimal example 0.5 for all; DINO 1.0, 0.1 for the globals, 0.5 for the locals"
        )
        solarize_p: tuple[float, ...] = Field(
            (0.2,), description="solarization probability of each view, globals first (1 value: all views); "
            "LeJEPA's minimal example 0.2 for all; DINO 0.0, 0.2 for the globals, 0.0 for the locals"
        )

        @model_validator(mode="after")
        def _check(self) -> MultiCropAugmentation.Config:
            self.check_per_view(self.global_crops + self.local_crops)
            _check_scale("global_scale", self.global_scale)
            _check_scale("local_scale", self.local_scale)
            return self

    def __init__(self, config: Config | None = None, *, image_size: int, channels: int,
                 mean: Sequence[float], std: Sequence[float]):
        config = config if config is not None else self.Config()
        self.config = config
        self.global_crops = config.global_crops
        self.local_crops = config.local_crops
        self.num_views = config.global_crops + config.local_crops
        self.image_size = image_size
        self.local_size = config.local_size
        self.channels = channels
        self.transforms = []
        for i in range(self.num_views):
            is_global = i < config.global_crops
            self.transforms.append(view_transform(
                config,
                size=image_size if is_global else config.local_size,
                scale=config.global_scale if is_global else config.local_scale,
                blur_p=config.per_view("blur_p", i),
                solarize_p=config.per_view("solarize_p", i),
                channels=channels, mean=mean, std=std,
            ))

    def __call__(self, image: Any) -> list[Tensor]:
        """PIL image or ``(C, H, W)`` uint8 tensor -> ``global_crops`` tensors ``(channels, image_size,
        image_size)`` followed by ``local_crops`` tensors ``(channels, local_size, local_size)``."""
        return [t(image) for t in self.transforms]

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(global_crops={self.global_crops} at {self.image_size}, "
                f"local_crops={self.local_crops} at {self.local_size})")


__all__ = ["MultiCropAugmentation"]
