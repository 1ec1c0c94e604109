"""scikit-learn's bundled handwritten digits (UCI optdigits test set): 1797 grey 8x8 images, values 0-16, 10
classes. Tiny and offline: good for smoke tests and CPU demos. Split deterministically (stratified) into
train/test, upsampled once to ``image_size``."""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field

from jepaflow.datasets.base import ImageDataset
from jepaflow.datasets.transforms import ImageDataConfig, resize_stack
from jepaflow.errors import DataError
from jepaflow.fields import ImageSize


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train_idx, test_idx)``, both sorted: scikit-learn's ``train_test_split`` stratified by ``labels`` (each
    class keeps its share in both parts), seeded by ``seed``."""
    from sklearn.model_selection import train_test_split  # the data set needs scikit-learn already

    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=test_fraction, stratify=labels, random_state=seed
    )
    return np.sort(train_idx), np.sort(test_idx)


def load_digits_uint8() -> tuple[np.ndarray, np.ndarray]:
    """``(images (1797, 8, 8) uint8 in 0..255, labels (1797,) int64)`` from scikit-learn (imported lazily)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("the digits data set needs scikit-learn, which is not installed",
                        "pip install scikit-learn  (or: pip install 'jepaflow[digits]')") from None
    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    return images, bunch.target.astype(np.int64)


class DigitsDataset(ImageDataset):
    """8x8 digits upsampled (bilinear) to ``image_size``; 80/20 stratified split with a fixed seed by default
    (1437 train / 360 test)."""

    class Config(ImageDataConfig):
        image_size: ImageSize = Field(32, description="side of the upsampled images (native 8)")
        channels: int = Field(1, description="1 (native), or 3 to repeat the grey channel")
        # Train-split pixel statistics at image_size=32 (the default split).
        mean: tuple[float, ...] = Field((0.3054,), description="normalization mean")
        std: tuple[float, ...] = Field((0.3236,), description="normalization std")
        test_fraction: float = Field(0.2, gt=0, lt=1, description="fraction of each class held out for test")
        split_seed: int = Field(0, ge=0, description="seed of the stratified split")

    num_classes = 10

    def __init__(self, config: Config, split: str = "train", augment: bool = False, transform=None):
        super().__init__(config, split, augment, transform)
        images, labels = load_digits_uint8()  # checks that scikit-learn is installed
        train_idx, test_idx = stratified_split(labels, config.test_fraction, config.split_seed)
        idx = train_idx if split == "train" else test_idx
        self.images = resize_stack(torch.from_numpy(images[idx]).unsqueeze(1), config.image_size)
        self.labels = labels[idx]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images[index]), int(self.labels[index])
