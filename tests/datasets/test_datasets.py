"""Data set plugins and transforms: shapes, dtypes, exact pixel values, determinism, user errors."""

from __future__ import annotations

import gzip
import os
import struct
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from jepaflow.datasets.digits import DigitsDataset, stratified_split
from jepaflow.datasets.fashion_mnist import DEFAULT_ROOT, FashionMNISTDataset, parse_idx, read_idx
from jepaflow.datasets.image_folder import ImageFolderDataset
from jepaflow.datasets.synthetic import SHAPES, SyntheticShapesDataset
from jepaflow.datasets.transforms import eval_transform, pretrain_transform, resize_stack
from jepaflow.errors import DataError
from jepaflow.interfaces import Dataset
from jepaflow.registry import default_registry


def _check_item(ds: Dataset, index: int = 0) -> tuple[torch.Tensor, int]:
    image, label = ds[index]
    assert isinstance(image, torch.Tensor) and type(image) is torch.Tensor  # no tv_tensors subclass leaks out
    assert image.dtype == torch.float32
    assert image.shape == (ds.channels, ds.image_size, ds.image_size)
    assert isinstance(label, int) and 0 <= label < ds.num_classes
    return image, label


# ------------------------------------------------------------------------------------------------ transforms
def test_eval_transform_is_exact_for_images_already_at_size():
    x = torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8)
    out = eval_transform(16, mean=(0.0,), std=(1.0,))(x)
    torch.testing.assert_close(out, x.float() / 255, rtol=0, atol=1e-6)  # no resampling: 1 level = 4e-3
    out = eval_transform(16, mean=(0.5, 0.25, 0.0), std=(0.5, 0.5, 2.0))(x)
    expected = (x.float() / 255 - torch.tensor([0.5, 0.25, 0.0])[:, None, None]) / torch.tensor([0.5, 0.5, 2.0])[
        :, None, None
    ]
    torch.testing.assert_close(out, expected)


def test_eval_transform_resizes_large_images_then_centre_crops():
    # 64x48 (H x W): short side 48 -> round(32 / 0.875) = 37, crop 32. A vertical ramp stays centred.
    ramp = torch.arange(64, dtype=torch.uint8).mul(3)[:, None].expand(64, 48)
    pil = Image.fromarray(ramp.numpy())
    out = eval_transform(32, mean=(0.0,), std=(1.0,))(pil)
    assert out.shape == (1, 32, 32)
    centre_row = out[0, :, 16]
    assert torch.all(centre_row[1:] > centre_row[:-1])  # still a strictly increasing ramp
    assert abs(out.mean().item() - ramp.float().mean().item() / 255) < 0.01  # symmetric crop of a linear ramp


def test_pretrain_transform_is_seeded_by_torch_and_shapes_match():
    x = torch.randint(0, 256, (3, 40, 40), dtype=torch.uint8)
    t = pretrain_transform(24, crop_scale=(0.3, 1.0))
    torch.manual_seed(1)
    a = t(x)
    torch.manual_seed(1)
    b = t(x)
    torch.manual_seed(2)
    c = t(x)
    assert a.shape == (3, 24, 24) and a.dtype == torch.float32
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)
    # A PIL image gives the same kind of output.
    assert t(Image.fromarray(x.permute(1, 2, 0).numpy())).shape == (3, 24, 24)


def test_pretrain_transform_defaults_have_no_flip_or_colour_steps():
    names = [type(s).__name__ for s in pretrain_transform(32).transforms]
    assert names[0] == "RandomResizedCrop"
    assert not any("Flip" in n or "Color" in n or "Gray" in n for n in names)
    names = [type(s).__name__ for s in pretrain_transform(32, horizontal_flip=True, color_jitter=0.5).transforms]
    assert "RandomHorizontalFlip" in names and "RandomGrayscale" in names


def test_grey_to_rgb_repeats_the_channel():
    x = torch.randint(0, 256, (1, 8, 8), dtype=torch.uint8)
    out = eval_transform(8, mean=(0.0,), std=(1.0,), channels=3)(x)
    assert out.shape == (3, 8, 8)
    for c in range(3):
        torch.testing.assert_close(out[c], x[0].float() / 255, rtol=0, atol=1e-6)


def test_resize_stack_is_identity_at_size_and_bilinear_otherwise():
    x = torch.randint(0, 256, (5, 1, 8, 8), dtype=torch.uint8)
    assert resize_stack(x, 8) is x
    flat = torch.full((2, 1, 8, 8), 77, dtype=torch.uint8)
    torch.testing.assert_close(resize_stack(flat, 32), torch.full((2, 1, 32, 32), 77, dtype=torch.uint8))


def test_config_rejects_mismatched_normalization_and_channels():
    with pytest.raises(ValidationError, match="mean has 2 values"):
        SyntheticShapesDataset.Config(mean=(0.5, 0.5))
    with pytest.raises(ValidationError, match="color_jitter needs channels=3"):
        SyntheticShapesDataset.Config(channels=1, color_jitter=1.0)
    with pytest.raises(ValidationError, match="unknown|extra"):
        SyntheticShapesDataset.Config(colour=1)


def test_entry_points_resolve_to_these_classes():
    reg = default_registry()
    assert reg.get("dataset", "synthetic") is SyntheticShapesDataset
    assert reg.get("dataset", "fashion_mnist") is FashionMNISTDataset
    assert reg.get("dataset", "digits") is DigitsDataset
    assert reg.get("dataset", "image_folder") is ImageFolderDataset


# ------------------------------------------------------------------------------------------------ Fashion-MNIST
def _idx_bytes(array: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def _write_fmnist(root, images: np.ndarray, labels: np.ndarray, compress: bool) -> None:
    os.makedirs(root, exist_ok=True)
    for split in ("train", "t10k"):
        for stem, arr in ((f"{split}-images-idx3-ubyte", images), (f"{split}-labels-idx1-ubyte", labels)):
            data = _idx_bytes(arr)
            if compress:
                with open(os.path.join(root, stem + ".gz"), "wb") as f:
                    f.write(gzip.compress(data))
            else:
                with open(os.path.join(root, stem), "wb") as f:
                    f.write(data)


@pytest.mark.parametrize("compress", [True, False], ids=["gz", "raw"])
def test_fashion_mnist_round_trips_a_handwritten_idx_file(tmp_path, compress):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3, 6, 6), dtype=np.uint8)
    labels = np.array([7, 0, 9], dtype=np.uint8)
    _write_fmnist(tmp_path, images, labels, compress)

    suffix = ".gz" if compress else ""
    np.testing.assert_array_equal(read_idx(str(tmp_path / f"train-images-idx3-ubyte{suffix}")), images)

    cfg = FashionMNISTDataset.Config(root=str(tmp_path), image_size=6, mean=(0.0,), std=(1.0,))
    for split in ("train", "test"):
        ds = FashionMNISTDataset(cfg, split=split, augment=False)
        assert len(ds) == 3
        for i in range(3):
            image, label = _check_item(ds, i)
            assert label == labels[i]
            torch.testing.assert_close(image[0], torch.from_numpy(images[i]).float() / 255, rtol=0, atol=1e-6)
    assert len(FashionMNISTDataset(cfg.model_copy(update={"limit": 2}), split="train")) == 2


def test_corrupt_idx_files_raise_data_error(tmp_path):
    good = _idx_bytes(np.zeros((2, 4, 4), dtype=np.uint8))
    with pytest.raises(DataError, match="bad magic"):
        parse_idx(b"\x12\x34" + good[2:])
    with pytest.raises(DataError, match="implies"):
        parse_idx(good[:-1])  # truncated payload
    with pytest.raises(DataError, match="truncated"):
        parse_idx(good[:6])  # header cut short
    bad_gz = tmp_path / "x.gz"
    bad_gz.write_bytes(gzip.compress(good)[:-8])  # truncated gzip stream
    with pytest.raises(DataError, match="cannot read"):
        read_idx(str(bad_gz))
    # Labels that do not match the images.
    _write_fmnist(tmp_path / "fm", np.zeros((3, 4, 4), np.uint8), np.zeros(2, np.uint8), compress=False)
    with pytest.raises(DataError, match="labels for 3 images"):
        FashionMNISTDataset(FashionMNISTDataset.Config(root=str(tmp_path / "fm"), image_size=4), split="train")


def test_fashion_mnist_missing_files_name_the_path_and_the_fix(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as info:
        FashionMNISTDataset(FashionMNISTDataset.Config(root=str(missing)), split="train")
    assert str(missing) in str(info.value) and "apt-get install -y dataset-fashion-mnist" in str(info.value)
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte"):
        FashionMNISTDataset(FashionMNISTDataset.Config(root=str(tmp_path)), split="test")


@pytest.mark.skipif(not os.path.isdir(DEFAULT_ROOT), reason=f"{DEFAULT_ROOT} absent (apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_real_files():
    train = FashionMNISTDataset(FashionMNISTDataset.Config(), split="train")
    test = FashionMNISTDataset(FashionMNISTDataset.Config(), split="test")
    assert (len(train), len(test), train.num_classes) == (60000, 10000, 10)
    assert train.images.shape == (60000, 1, 28, 28) and train.images.dtype == torch.uint8
    assert np.bincount(test.labels).tolist() == [1000] * 10
    # The default normalization constants are the train pixel statistics.
    pixels = train.images.float() / 255
    assert abs(pixels.mean().item() - 0.2860) < 1e-3 and abs(pixels.std().item() - 0.3530) < 1e-3
    image, _ = _check_item(test, 0)
    assert abs(image.mean().item() - ((test.images[0].float() / 255).mean().item() - 0.2860) / 0.3530) < 1e-5

    rgb32 = FashionMNISTDataset(FashionMNISTDataset.Config(image_size=32, channels=3, limit=100), "test", augment=True)
    assert len(rgb32) == 100
    image, _ = _check_item(rgb32, 5)
    torch.testing.assert_close(image[0], image[2], rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------ image folder
def _png(path, value: int) -> None:
    Image.fromarray(np.full((20, 24, 3), value, dtype=np.uint8)).save(path)


@pytest.fixture
def image_root(tmp_path):
    root = tmp_path / "imgs"
    # Classes created out of order; labels must follow sorted names.
    for split, files in {"train": {"zebra": [10, 20], "apple": [30, 40, 50]}, "val": {"zebra": [60], "apple": [70]}}.items():
        for cls, values in files.items():
            (root / split / cls).mkdir(parents=True)
            for j, v in enumerate(values):
                _png(root / split / cls / f"img{j}.png", v)
    (root / "train" / "apple" / "img1_broken.jpg").write_bytes(b"not a jpeg at all")  # sorts after img1.png
    (root / "train" / "apple" / "notes.txt").write_text("ignored")
    return root


def test_image_folder_sorted_classes_and_corrupt_file_skipped(image_root):
    # 1 corrupt file in 6 (17%): allowed explicitly here (the default, 5%, would stop the run)
    cfg = ImageFolderDataset.Config(root=str(image_root), image_size=16, mean=(0.0,), std=(1.0,),
                                    max_unreadable_fraction=0.5)
    ds = ImageFolderDataset(cfg, split="train", augment=False)
    assert ds.classes == ["apple", "zebra"] and ds.num_classes == 2
    assert len(ds) == 6  # 5 PNGs + the corrupt file; the .txt is not an image
    names = [os.path.basename(ds.path(i)) for i in range(len(ds))]
    assert names == ["img0.png", "img1.png", "img1_broken.jpg", "img2.png", "img0.png", "img1.png"]
    assert ds.labels.tolist() == [0, 0, 0, 0, 1, 1]

    with pytest.warns(RuntimeWarning, match="img1_broken.jpg"):
        image, label = ds[2]  # the corrupt one: the next item (img2.png, value 50) comes back instead
    assert ds.skipped == 1 and label == 0
    torch.testing.assert_close(image, torch.full((3, 16, 16), 50 / 255), rtol=0, atol=1e-6)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a known-bad file is neither re-decoded nor re-reported
        values = [round(ds[i][0].mean().item() * 255) for i in range(len(ds))]
    assert ds.skipped == 1
    assert values == [30, 40, 50, 50, 10, 20]

    test = ImageFolderDataset(cfg, split="test", augment=True)
    assert len(test) == 2 and test.labels.tolist() == [0, 1]
    _check_item(test, 1)


def test_image_folder_grey_decoding(image_root):
    ds = ImageFolderDataset(ImageFolderDataset.Config(root=str(image_root), image_size=8, channels=1,
                                                      mean=(0.5,), std=(0.5,)), split="test")
    image, _ = _check_item(ds, 0)
    assert image.shape == (1, 8, 8)


def test_image_folder_user_errors_name_the_path(tmp_path, image_root):
    missing = tmp_path / "no_such_dir"
    with pytest.raises(DataError) as info:
        ImageFolderDataset(ImageFolderDataset.Config(root=str(missing)), split="train")
    assert str(missing) in str(info.value) and "data.root" in str(info.value)
    with pytest.raises(DataError, match="data.test_dir"):
        ImageFolderDataset(ImageFolderDataset.Config(root=str(image_root), test_dir="validation"), split="test")
    empty = tmp_path / "empty"
    (empty / "train" / "cls").mkdir(parents=True)
    with pytest.raises(DataError, match="no images found"):
        ImageFolderDataset(ImageFolderDataset.Config(root=str(empty)), split="train")
    (image_root / "val" / "mango").mkdir()
    with pytest.raises(DataError, match="mango"):
        ImageFolderDataset(ImageFolderDataset.Config(root=str(image_root)), split="test")


# ------------------------------------------------------------------------------------------------ digits
def test_stratified_split_is_disjoint_complete_and_stratified():
    pytest.importorskip("sklearn")
    labels = np.repeat(np.arange(3), [10, 20, 30])
    train, test = stratified_split(labels, 0.2, seed=0)
    assert len(np.intersect1d(train, test)) == 0 and len(train) + len(test) == 60
    assert np.bincount(labels[test]).tolist() == [2, 4, 6]
    train2, test2 = stratified_split(labels, 0.2, seed=0)
    assert np.array_equal(test, test2) and not np.array_equal(test, stratified_split(labels, 0.2, seed=1)[1])


def test_digits_splits_shapes_and_normalization():
    pytest.importorskip("sklearn")
    train = DigitsDataset(DigitsDataset.Config(), split="train")
    test = DigitsDataset(DigitsDataset.Config(), split="test", augment=True)
    assert (len(train), len(test)) == (1437, 360)
    assert train.images.shape == (1437, 1, 32, 32) and train.images.dtype == torch.uint8
    assert set(np.unique(test.labels).tolist()) == set(range(10))
    _check_item(train, 3)
    _check_item(test, 0)
    pixels = train.images.float() / 255
    assert abs(pixels.mean().item() - 0.3054) < 1e-4 and abs(pixels.std().item() - 0.3236) < 1e-4


# ------------------------------------------------------------------------------------------------ synthetic
def test_synthetic_is_deterministic_per_index_and_balanced():
    cfg = SyntheticShapesDataset.Config(num_train=40, num_test=12, num_classes=len(SHAPES))
    a = SyntheticShapesDataset(cfg, split="train")
    b = SyntheticShapesDataset(cfg, split="train")
    assert len(a) == 40 and len(SyntheticShapesDataset(cfg, split="test")) == 12
    for i in (0, 7, 39):
        raw_a, label = a.raw(i)
        assert raw_a.shape == (3, 32, 32) and raw_a.dtype == torch.uint8 and label == i % len(SHAPES)
        torch.testing.assert_close(raw_a, b.raw(i)[0], rtol=0, atol=0)
        image, _ = _check_item(a, i)
        torch.testing.assert_close(image, b[i][0], rtol=0, atol=0)
    assert not torch.equal(a.raw(0)[0], a.raw(len(SHAPES))[0])  # same class, different image
    assert not torch.equal(a.raw(0)[0], SyntheticShapesDataset(cfg, split="test").raw(0)[0])
    other_seed = SyntheticShapesDataset(cfg.model_copy(update={"seed": 1}), split="train")
    assert not torch.equal(a.raw(0)[0], other_seed.raw(0)[0])
    grey = SyntheticShapesDataset(cfg.model_copy(update={"channels": 1, "image_size": 16}), split="train")
    _check_item(grey, 2)
    with pytest.raises(IndexError):
        a.raw(40)


def test_synthetic_shapes_are_distinguishable():
    """Raw-pixel kNN beats chance by a wide margin: the label is in the pixels, despite position/colour."""
    from jepaflow.probes.knn import knn_accuracy

    cfg = SyntheticShapesDataset.Config(num_train=1024, num_test=256)
    train, test = SyntheticShapesDataset(cfg, "train"), SyntheticShapesDataset(cfg, "test")

    def stack(ds):
        items = [ds[i] for i in range(len(ds))]
        return torch.stack([x.flatten() for x, _ in items]), torch.tensor([y for _, y in items])

    acc = knn_accuracy(*stack(train), *stack(test), k=20)
    assert acc > 0.35  # chance is 0.25; measured 0.457


def test_fused_float_and_normalize_steps_equal_torchvision_v2():
    """ToFloatImage + NormalizeImage replace v2.ToImage/ToDtype/MatchChannels/Normalize/ToPureTensor for speed:
    the outputs must stay bit-identical (same crops under the same seed, same arithmetic)."""
    import numpy as np
    from PIL import Image
    from torchvision.transforms import v2

    from jepaflow.datasets.transforms import MatchChannels, ResizeForEval, eval_transform, pretrain_transform

    def reference(size, mean, std, channels, jitter, augment):
        head = [v2.RandomResizedCrop(size, scale=(0.3, 1.0), antialias=True)] if augment else [
            ResizeForEval(size), v2.CenterCrop(size)]
        mid = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), MatchChannels(channels)]
        if jitter:
            mid += [v2.RandomApply([v2.ColorJitter(0.8 * jitter, 0.8 * jitter, 0.8 * jitter, 0.2 * jitter)], p=0.8),
                    v2.RandomGrayscale(p=0.2)]
        return v2.Compose(head + mid + [v2.Normalize(list(mean), list(std)), v2.ToPureTensor()])

    rng = np.random.default_rng(0)
    grey_t = torch.from_numpy(rng.integers(0, 256, (1, 28, 28), dtype=np.uint8))
    rgb_pil = Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8))
    grey_pil = Image.fromarray(rng.integers(0, 256, (40, 50), dtype=np.uint8))
    imnet = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    cases = [(grey_t, 1, (0.286,), (0.353,), 0.0), (grey_t, 3, (0.286,), (0.353,), 0.0),
             (rgb_pil, 3, *imnet, 0.0), (rgb_pil, 3, *imnet, 0.5), (rgb_pil, 1, (0.5,), (0.25,), 0.0),
             (grey_pil, 3, (0.5,), (0.25,), 0.0)]
    for image, channels, mean, std, jitter in cases:
        torch.manual_seed(3)
        want = reference(24, mean, std, channels, jitter, augment=True)(image)
        torch.manual_seed(3)
        got = pretrain_transform(24, (0.3, 1.0), mean, std, False, jitter, channels)(image)
        assert type(got) is torch.Tensor and got.dtype == torch.float32 and torch.equal(got, want)
        got = eval_transform(24, mean, std, channels=channels)(image)
        assert torch.equal(got, reference(24, mean, std, channels, 0.0, augment=False)(image))
