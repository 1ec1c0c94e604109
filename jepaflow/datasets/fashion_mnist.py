"""Fashion-MNIST (Xiao et al. 2017) from its four IDX files, kept in memory as one uint8 tensor per split.

60000 train / 10000 test grey 28x28 images, 10 classes. Files are read from ``root`` (gzip or raw), never
downloaded: on Debian/Ubuntu ``apt-get install -y dataset-fashion-mnist`` puts them in
``/usr/share/datasets/fashion-mnist/``.
"""

from __future__ import annotations

import gzip
import os
import zlib

import numpy as np
import torch
from pydantic import Field

from jepaflow.datasets.base import ImageDataset
from jepaflow.datasets.transforms import ImageDataConfig, resize_stack
from jepaflow.errors import DataError
from jepaflow.fields import ImageSize

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
#: file stem per split: (images, labels)
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_GET_IT = f"`apt-get install -y dataset-fashion-mnist` puts them in {DEFAULT_ROOT}/, or set data.root"

# IDX element type codes (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT")
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode an IDX payload: magic ``00 00 <type> <ndim>``, ``ndim`` big-endian uint32 sizes, then the
    row-major elements. Raises :class:`DataError` when the header or the length is inconsistent."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataError(f"{name} is not an IDX file (bad magic number {data[:4].hex() or 'none'})",
                        f"replace the file; {_GET_IT}")
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{name} is truncated (header of {ndim} dimensions cut short)", f"replace the file; {_GET_IT}")
    shape = tuple(int(s) for s in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise DataError(f"{name} has {len(data)} bytes but its header {shape} implies {expected}",
                        f"the file is truncated or corrupt: replace it; {_GET_IT}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


def read_idx(path: str) -> np.ndarray:
    """Read an IDX file, gzip-compressed (detected by its magic bytes, whatever the name) or raw."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read {path!r}: {exc}", f"replace the file; {_GET_IT}") from None
    return parse_idx(data, name=repr(path))


def find_idx(root: str, stem: str) -> str:
    """``root/stem.gz`` or ``root/stem``; also accepts the ``train-images.idx3-ubyte`` spelling."""
    candidates = [stem + ".gz", stem, stem.replace("-idx", ".idx") + ".gz", stem.replace("-idx", ".idx")]
    for name in candidates:
        p = os.path.join(root, name)
        if os.path.isfile(p):
            return p
    raise DataError(f"Fashion-MNIST file {os.path.join(root, stem)}(.gz) not found", _GET_IT)


def load_split(root: str, split: str, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(images (N, H, W) uint8, labels (N,) int64)`` of one split, validated, the first ``limit`` items."""
    img_path, lbl_path = (find_idx(root, stem) for stem in FILES[split])
    images, labels = read_idx(img_path), read_idx(lbl_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"{img_path!r} holds {images.dtype} data of shape {images.shape}, not (N, H, W) uint8",
                        f"replace the file; {_GET_IT}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(f"{lbl_path!r} holds {labels.shape} labels for {len(images)} images",
                        f"replace the file; {_GET_IT}")
    if len(labels) and int(labels.max()) >= len(CLASSES):
        raise DataError(f"{lbl_path!r} has label {int(labels.max())} (10 classes)", f"replace the file; {_GET_IT}")
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return images, labels.astype(np.int64)


class FashionMNISTDataset(ImageDataset):
    """Fashion-MNIST as ``(C, image_size, image_size)`` float images, labels 0..9.

    The split is decoded once into a ``(N, 1, image_size, image_size)`` uint8 tensor (bilinear resize when
    ``image_size`` is not 28); ``__getitem__`` only applies the crop/normalize transform. With ``channels=3``
    the grey channel is repeated.
    """

    class Config(ImageDataConfig):
        root: str = Field(DEFAULT_ROOT, description="folder with the four IDX files (.gz or raw)")
        image_size: ImageSize = Field(28, description="side of the images (28 native; e.g. 32, bilinear)")
        channels: int = Field(1, description="1 (native), or 3 to repeat the grey channel")
        mean: tuple[float, ...] = Field((0.2860,), description="normalization mean (train pixels)")
        std: tuple[float, ...] = Field((0.3530,), description="normalization std (train pixels)")
        limit: int | None = Field(None, ge=1, le=2**40, description="use only the first N items of the split (quick runs)")

    num_classes = len(CLASSES)
    classes = CLASSES

    def __init__(self, config: Config, split: str = "train", augment: bool = False, transform=None):
        super().__init__(config, split, augment, transform)
        root = os.path.expanduser(config.root)
        if not os.path.isdir(root):
            raise DataError(f"Fashion-MNIST folder {root!r} does not exist", _GET_IT)
        images, labels = load_split(root, split, config.limit)
        self.images = resize_stack(torch.from_numpy(images.copy()).unsqueeze(1), config.image_size)
        self.labels = labels  # numpy: int() of an element is cheaper than of a tensor

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images[index]), int(self.labels[index])
