"""Procedural shapes: a labelled image data set that needs no files, for tests, CPU demos and the quickstart.

Item ``i`` of a split is drawn by a generator seeded with ``(seed, split, i)``, so it is the same in every
process and run. Each image is one shape (the label) at a random position, size, rotation and colour over a
random background with a faint gradient and pixel noise. Shapes are rendered from signed distance functions
with one pixel of soft edge (anti-aliased), on the whole pixel grid at once.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from pydantic import Field

from jepaflow.datasets.base import ImageDataset
from jepaflow.datasets.transforms import ImageDataConfig
from jepaflow.fields import ImageSize

#: class index -> shape; the first ``num_classes`` are used
SHAPES: tuple[str, ...] = ("disc", "square", "triangle", "cross", "ring", "diamond", "stripes", "frame")

#: largest rotation (radians): well below 45 degrees so that a square never becomes a diamond
MAX_ROTATION = math.pi / 12

_SPLIT_IDS = {"train": 0, "test": 1}


def shape_sdf(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed distance (negative inside, in units of the shape's radius) of ``shape`` centred at the origin,
    at points ``(u, v)`` of its own frame (``v`` pointing down). Each shape fits in the unit disc."""
    au, av = np.abs(u), np.abs(v)
    box = np.maximum(au, av)
    if shape == "disc":
        return np.hypot(u, v) - 1.0
    if shape == "square":
        return box - 0.8
    if shape == "triangle":
        # Equilateral, apex up: inside of the three edges (outward normals at 90, 210, 330 degrees; inradius 0.5).
        c30 = math.sqrt(3) / 2
        return np.maximum.reduce([v, -c30 * u - 0.5 * v, c30 * u - 0.5 * v]) - 0.5
    if shape == "cross":
        return np.minimum(np.maximum(au - 0.9, av - 0.3), np.maximum(au - 0.3, av - 0.9))
    if shape == "ring":
        return np.abs(np.hypot(u, v) - 0.72) - 0.24
    if shape == "diamond":
        return (au + av - 1.0) / math.sqrt(2)
    if shape == "stripes":
        # A square cut into three horizontal bars.
        period = 0.6
        bars = np.abs((v / period + 0.25) % 1.0 - 0.5) * period - period / 4
        return np.maximum(box - 0.8, bars)
    if shape == "frame":
        return np.maximum(box - 0.85, 0.5 - box)
    raise ValueError(f"unknown shape {shape!r} (known: {', '.join(SHAPES)})")


def render_shape(shape: str, rng: np.random.Generator, image_size: int, channels: int) -> np.ndarray:
    """One ``(channels, S, S)`` uint8 image of ``shape`` with every nuisance drawn from ``rng``."""
    s = image_size
    radius = rng.uniform(0.2, 0.4) * s
    cx, cy = rng.uniform(radius, s - radius, size=2)
    theta = rng.uniform(-MAX_ROTATION, MAX_ROTATION)
    background = rng.uniform(0.0, 1.0, size=channels)
    # Foreground = background shifted by 0.3..0.7 per channel, wrapped: every channel differs by >= 0.3.
    foreground = (background + rng.uniform(0.3, 0.7, size=channels)) % 1.0
    gradient = rng.normal(0.0, 0.1, size=(2, channels))  # change across the image, per channel
    noise = rng.normal(0.0, 0.03, size=(channels, s, s))

    y, x = np.mgrid[0:s, 0:s] + 0.5  # pixel centres
    dx, dy = x - cx, y - cy
    cos, sin = math.cos(theta), math.sin(theta)
    u, v = (cos * dx + sin * dy) / radius, (-sin * dx + cos * dy) / radius
    alpha = np.clip(0.5 - shape_sdf(shape, u, v) * radius, 0.0, 1.0)  # one-pixel soft edge

    ramp = (x / s - 0.5)[None] * gradient[0][:, None, None] + (y / s - 0.5)[None] * gradient[1][:, None, None]
    bg = background[:, None, None] + ramp
    image = bg + alpha[None] * (foreground[:, None, None] - bg) + noise
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


class SyntheticShapesDataset(ImageDataset):
    """``num_classes`` procedural shapes (see :data:`SHAPES`), balanced: item ``i`` has label
    ``i % num_classes``; its image is generated on the fly, deterministically from ``(seed, split, i)``."""

    class Config(ImageDataConfig):
        num_train: int = Field(2048, ge=1, le=2**40, description="images in the train split")
        num_test: int = Field(512, ge=1, le=2**40, description="images in the test split")
        image_size: ImageSize = Field(32, ge=8, description="side of the square images")
        channels: int = Field(3, description="3: colour shapes, 1: grey")
        num_classes: int = Field(4, ge=2, le=len(SHAPES), description=f"shapes used: the first N of {SHAPES}")
        seed: int = Field(0, ge=0, description="seed of the generated images (train and test differ)")
        # Pixel statistics of the default configuration (close to uniform colours).
        mean: tuple[float, ...] = Field((0.5017,), description="normalization mean")
        std: tuple[float, ...] = Field((0.2867,), description="normalization std")

    def __init__(self, config: Config, split: str = "train", augment: bool = False, transform=None):
        super().__init__(config, split, augment, transform)
        self.num_classes = config.num_classes
        self.classes = SHAPES[: config.num_classes]
        self._length = config.num_train if split == "train" else config.num_test

    def __len__(self) -> int:
        return self._length

    def raw(self, index: int) -> tuple[torch.Tensor, int]:
        """Item ``index`` before the transform: a ``(C, S, S)`` uint8 tensor and its label."""
        if not 0 <= index < self._length:
            raise IndexError(f"index {index} out of range for {self._length} items")
        label = index % self.num_classes
        rng = np.random.default_rng([self.config.seed, _SPLIT_IDS[self.split], index])
        image = render_shape(SHAPES[label], rng, self.image_size, self.channels)
        return torch.from_numpy(image), label

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.raw(index)
        return self.transform(image), label
