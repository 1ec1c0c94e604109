"""Shared base of the built-in image data sets: the constructor contract of :class:`jepaflow.interfaces.Dataset`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jepaflow.datasets.transforms import ImageDataConfig, check_split
from jepaflow.interfaces import Dataset


class ImageDataset(Dataset):
    """Stores the config, the split and the transform (``transform`` if given, e.g. a view sampler, else the
    config's pretraining or evaluation transform), and starts the unreadable-item counter ``skipped``."""

    def __init__(self, config: ImageDataConfig, split: str = "train", augment: bool = False,
                 transform: Callable[[Any], Any] | None = None):
        super().__init__()
        self.config = config
        self.split = check_split(split)
        self.image_size = config.image_size
        self.channels = config.channels
        self.transform = transform if transform is not None else config.make_transform(augment)
        self.skipped = 0
