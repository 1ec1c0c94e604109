"""Folder-of-images data set in the ImageNet layout: ``root/<split_dir>/<class>/**/<image>``.

The index holds relative paths in one numpy byte buffer plus offsets, not a Python list of strings: DataLoader
workers forked from the main process then share it without copy-on-read growth (reading a Python object bumps its
refcount and dirties its page), which matters at ImageNet's 1.28M files. Paths are kept as the file system's bytes,
so a file name that is not UTF-8 is read like any other.

What a real folder holds besides images is handled: only regular files are read (a FIFO or device named
``x.png`` would block or stream forever), a symbolic link that loops back is followed once and no further, an
unreadable sub-folder is skipped with a warning, and a file that fails to decode is skipped and counted, until
more than ``max_unreadable_fraction`` of the files tried have failed: then the data set stops with a message
rather than training on copies of the few readable ones.
"""

from __future__ import annotations

import os
import stat
import warnings

import numpy as np
import torch
from PIL import Image
from pydantic import Field

from jepaflow.datasets.base import ImageDataset
from jepaflow.datasets.transforms import ImageDataConfig
from jepaflow.errors import DataError, clip

#: lower-case file extensions read as images
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".pgm", ".pbm", ".tif", ".tiff", ".gif", ".jfif"}
)


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


#: fewest files tried before the unreadable fraction is judged (fewer when the data set is smaller)
MIN_TRIED_FOR_FRACTION = 200


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows symlinks; a link that loops raises ELOOP
    except OSError:
        return False


def _is_regular_file(entry: os.DirEntry) -> bool:
    try:
        return entry.is_file()  # follows symlinks; False for FIFOs, sockets, devices and broken links
    except OSError:
        return False


def _class_dirs(split_dir: str) -> list[str]:
    with os.scandir(split_dir) as it:
        return sorted(e.name for e in it if not e.name.startswith(".") and _is_dir(e))


def _scan_class(class_dir: str, prefix: str) -> list[str]:
    """Image paths under ``class_dir`` (recursively, following symlinks but entering each real folder once),
    relative to the split dir, sorted. Only regular files count; unreadable sub-folders are skipped."""
    out: list[str] = []
    seen: set[tuple[int, int]] = set()
    stack = [(class_dir, prefix)]
    while stack:
        d, rel = stack.pop()
        try:
            st = os.stat(d)
            if (st.st_dev, st.st_ino) in seen:
                continue  # a symlink back to a folder already scanned: a loop, or the same files twice
            seen.add((st.st_dev, st.st_ino))
            with os.scandir(d) as it:
                entries = list(it)
        except OSError as exc:
            warnings.warn(f"skipping the folder {d!r}: {exc.strerror or exc}", RuntimeWarning, stacklevel=3)
            continue
        for e in entries:
            if e.name.startswith("."):
                continue
            if _is_dir(e):
                stack.append((e.path, f"{rel}/{e.name}"))
            elif _is_image(e.name) and _is_regular_file(e):
                out.append(f"{rel}/{e.name}")
    out.sort()
    return out


class ImageFolderDataset(ImageDataset):
    """Images in ``root/<train_dir | test_dir>/<class>/``, labelled by class folder (sorted names -> 0..C-1).

    The class list comes from the train folder for both splits (so that labels agree); when only the test
    folder exists, from the test folder. A corrupt or unreadable image is skipped: a warning is issued once per
    file, ``skipped`` is incremented, and the next readable item (index+1, +2, ... modulo the length) is
    returned instead, so an item's content is still a function of its index. ``skipped`` counts per process
    (each DataLoader worker keeps its own).
    """

    class Config(ImageDataConfig):
        root: str = Field(..., description="data set folder holding the split folders")
        train_dir: str = Field("train", description="train split folder under root")
        test_dir: str = Field("val", description="test split folder under root")
        max_unreadable_fraction: float = Field(
            0.05, ge=0, le=1,
            description="stop with a message when more than this fraction of the files tried fail to decode "
            f"(judged after {MIN_TRIED_FOR_FRACTION} files, or all of a smaller data set); below it, bad files are "
            "skipped and counted",
        )
        # image_size=224, channels=3 (1: decode as grey), ImageNet mean/std, crop_scale=(0.3, 1.0): inherited.

    def __init__(self, config: Config, split: str = "train", augment: bool = False, transform=None):
        super().__init__(config, split, augment, transform)
        self._bad: set[int] = set()
        self._tried: np.ndarray | None = None  # which items this process has tried to decode (bool per item)
        self._tried_count = 0
        self.max_unreadable_fraction = config.max_unreadable_fraction

        root = os.path.expanduser(config.root)
        if not os.path.isdir(root):
            raise DataError(
                f"data folder {root!r} does not exist",
                f"set data.root to the folder holding {config.train_dir!r}/ and {config.test_dir!r}/ "
                "(layout: root/<split>/<class>/<image>.jpg)",
            )
        split_name = config.train_dir if split == "train" else config.test_dir
        self.split_dir = os.path.join(root, split_name)
        if not os.path.isdir(self.split_dir):
            key = "train_dir" if split == "train" else "test_dir"
            raise DataError(
                f"no {split} split folder {self.split_dir!r}",
                f"create it (root/{split_name}/<class>/<image>.jpg) or set data.{key} to the folder's name",
            )

        train_dir = os.path.join(root, config.train_dir)
        self.classes = _class_dirs(train_dir if os.path.isdir(train_dir) else self.split_dir)
        present = _class_dirs(self.split_dir)
        unknown = sorted(set(present) - set(self.classes))
        if unknown:
            raise DataError(
                f"{self.split_dir!r} has class folders missing from {train_dir!r}: {', '.join(unknown[:5])}"
                + (" ..." if len(unknown) > 5 else ""),
                "both splits must use the same class folder names",
            )
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.num_classes = len(self.classes)

        paths: list[str] = []
        labels: list[int] = []
        for c in present:
            found = _scan_class(os.path.join(self.split_dir, c), c)
            paths += found
            labels += [self.class_to_idx[c]] * len(found)
        if not paths:
            raise DataError(
                f"no images found under {self.split_dir!r} (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})",
                f"put images in {self.split_dir}/<class>/ (one folder per class), or fix data.root",
            )
        encoded = [os.fsencode(p) for p in paths]  # the file system's bytes: any file name round-trips
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in encoded], out=self._offsets[1:])
        self._buffer = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def path(self, index: int) -> str:
        """Absolute path of item ``index``."""
        rel = os.fsdecode(self._buffer[self._offsets[index] : self._offsets[index + 1]].tobytes())
        return os.path.join(self.split_dir, rel)

    def _load(self, index: int) -> Image.Image:
        # O_NONBLOCK: a FIFO put in place of an image after the scan must not block the loader forever
        fd = os.open(self.path(index), os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise OSError("not a regular file")
            with Image.open(f) as img:
                return img.convert("RGB" if self.channels == 3 else "L")  # convert() forces the full decode

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} items")
        index %= n
        for step in range(n):
            i = (index + step) % n
            if i in self._bad:
                continue
            first_try = self._note_try(i)
            try:
                img = self._load(i)
            except (OSError, ValueError, Image.DecompressionBombError) as exc:  # corrupt, truncated, unreadable
                self._bad.add(i)
                self.skipped += 1
                warnings.warn(
                    f"skipping unreadable image {self.path(i)!r} ({type(exc).__name__}: {clip(str(exc), 200)})",
                    RuntimeWarning,
                    stacklevel=2,
                )
                self._check_unreadable_fraction()
                continue
            if first_try:
                self._check_unreadable_fraction()
            return self.transform(img), int(self.labels[i])
        raise DataError(f"no readable image in {self.split_dir!r} ({n} files, all failed to decode)",
                        "check the files (e.g. `python -c 'from PIL import Image; Image.open(F).load()'`)")

    def _note_try(self, index: int) -> bool:
        """Record a decode attempt of ``index``; True the first time (a new file tried)."""
        if self._tried is None:
            self._tried = np.zeros(len(self), dtype=bool)  # 1 byte per item: 1.3 MB for ImageNet
        if self._tried[index]:
            return False
        self._tried[index] = True
        self._tried_count += 1
        return True

    def _check_unreadable_fraction(self) -> None:
        """Stop once more than ``max_unreadable_fraction`` of the distinct files tried (at least
        :data:`MIN_TRIED_FOR_FRACTION`, or the whole data set if smaller) failed to decode."""
        tried = self._tried_count
        if tried >= min(MIN_TRIED_FOR_FRACTION, len(self)) and len(self._bad) > self.max_unreadable_fraction * tried:
            raise DataError(
                f"{len(self._bad)} of the {tried} images tried in {self.split_dir!r} could not be read "
                f"({len(self._bad) / tried:.0%}, above data.max_unreadable_fraction = "
                f"{self.max_unreadable_fraction}); training would only see copies of the readable ones",
                "repair or remove the broken files (the warnings name them), or raise data.max_unreadable_fraction",
            )
