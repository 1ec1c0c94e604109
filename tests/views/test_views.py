"""View samplers: TwoViewAugmentation (SimCLR/BYOL/VICReg views) and MultiCropAugmentation (global + local crops)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError
from torchvision.transforms import v2

from jepaflow.registry import get_plugin
from jepaflow.views.multicrop import MultiCropAugmentation
from jepaflow.views.two_view import TwoViewAugmentation, blur_kernel_size

MEAN3, STD3 = (0.5, 0.4, 0.3), (0.25, 0.2, 0.1)
#: every random colour/blur/flip step off: a view is then only a crop + normalization
NO_COLOUR = dict(flip_p=0.0, color_jitter_p=0.0, grayscale_p=0.0, blur_p=(0.0,), solarize_p=(0.0,))


def rgb_image(size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def two_view(channels: int = 3, image_size: int = 32, **fields) -> TwoViewAugmentation:
    mean, std = (MEAN3, STD3) if channels == 3 else ((0.3,), (0.2,))
    return TwoViewAugmentation(TwoViewAugmentation.Config(**fields), image_size=image_size, channels=channels,
                               mean=mean, std=std)


def steps(transform: v2.Compose) -> list[type]:
    """Types of a view pipeline's steps, RandomApply unwrapped."""
    out = []
    for t in transform.transforms:
        out += [type(u) for u in t.transforms] if isinstance(t, v2.RandomApply) else [type(t)]
    return out


def test_defaults_are_simclr_and_registered():
    cfg = TwoViewAugmentation.Config()
    assert (cfg.num_views, cfg.crop_scale, cfg.color_jitter_p, cfg.grayscale_p) == (2, (0.08, 1.0), 0.8, 0.2)
    assert (cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue) == (0.8, 0.8, 0.8, 0.2)
    assert (cfg.blur_p, cfg.solarize_p, cfg.blur_sigma) == ((0.5, 0.5), (0.0, 0.0), (0.1, 2.0))
    assert get_plugin("view", "two_view") is TwoViewAugmentation
    assert get_plugin("view", "multicrop") is MultiCropAugmentation


def test_count_and_shapes_from_tensor_and_pil():
    aug = two_view(blur_p=(1.0, 0.1), solarize_p=(0.0, 0.2))
    assert aug.num_views == 2
    for image in (rgb_image(40), Image.fromarray(rgb_image(40).permute(1, 2, 0).numpy())):
        views = aug(image)
        assert len(views) == 2
        for v in views:
            assert type(v) is torch.Tensor and v.dtype == torch.float32 and v.shape == (3, 32, 32)
    assert len(two_view(num_views=4, blur_p=(0.5,), solarize_p=(0.0,))(rgb_image())) == 4


def test_constant_image_normalizes_to_expected_value():
    image = torch.full((3, 32, 32), 128, dtype=torch.uint8)
    for v in two_view(**NO_COLOUR)(image):
        expected = torch.tensor([(128 / 255 - m) / s for m, s in zip(MEAN3, STD3)]).view(3, 1, 1).expand(3, 32, 32)
        torch.testing.assert_close(v, expected, atol=1e-5, rtol=0)


def test_deterministic_under_manual_seed_and_views_differ():
    aug, image = two_view(), rgb_image()
    torch.manual_seed(0)
    a = aug(image)
    torch.manual_seed(0)
    b = aug(image)
    torch.manual_seed(1)
    c = aug(image)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, atol=0, rtol=0)
    assert not torch.equal(a[0], a[1])  # two independent augmentations of the same image
    assert not torch.equal(a[0], c[0])  # another seed, other views


def test_per_view_blur_probability():
    # Full-image crops (scale 1: RandomResizedCrop falls back to the whole image), blur always on view 0 only.
    aug = two_view(**{**NO_COLOUR, "crop_scale": (1.0, 1.0), "blur_p": (1.0, 0.0)})
    assert v2.GaussianBlur in steps(aug.transforms[0]) and v2.GaussianBlur not in steps(aug.transforms[1])
    image = rgb_image()
    blurred, plain = aug(image)
    unblurred = (image.float() / 255 - torch.tensor(MEAN3).view(3, 1, 1)) / torch.tensor(STD3).view(3, 1, 1)
    torch.testing.assert_close(plain, unblurred, atol=1e-5, rtol=0)
    assert blurred.std() < 0.9 * plain.std()  # blur removes the high-frequency noise


def test_solarize_inverts_bright_pixels():
    image = torch.where(torch.arange(16).view(1, 1, 16) < 8, 40, 200).to(torch.uint8).expand(3, 16, 16)
    aug = TwoViewAugmentation(
        TwoViewAugmentation.Config(**{**NO_COLOUR, "crop_scale": (1.0, 1.0), "solarize_p": (1.0,)}),
        image_size=16, channels=3, mean=(0.0,), std=(1.0,))
    v = aug(image)[0]
    # x >= 0.5 -> 1 - x: 200/255 becomes 55/255; 40/255 stays.
    expected = torch.where(torch.arange(16).view(1, 1, 16) < 8, 40 / 255, 1 - 200 / 255).expand(3, 16, 16)
    torch.testing.assert_close(v, expected.float(), atol=1e-5, rtol=0)


def test_grayscale_on_rgb_and_one_channel_path():
    aug = TwoViewAugmentation(TwoViewAugmentation.Config(**{**NO_COLOUR, "grayscale_p": 1.0}), image_size=32,
                              channels=3, mean=(0.0,), std=(1.0,))
    v = aug(rgb_image())[0]
    torch.testing.assert_close(v[0], v[1], atol=0, rtol=0)
    torch.testing.assert_close(v[1], v[2], atol=0, rtol=0)

    # One channel: saturation, hue and grayscale are skipped, brightness/contrast still apply.
    grey = two_view(channels=1, image_size=28, color_jitter_p=1.0, grayscale_p=1.0)
    jitter = [t for tr in grey.transforms for t in tr.transforms if isinstance(t, v2.RandomApply)
              and isinstance(t.transforms[0], v2.ColorJitter)][0].transforms[0]
    assert jitter.saturation is None and jitter.hue is None and jitter.brightness is not None
    assert v2.RandomGrayscale not in steps(grey.transforms[0])
    image = torch.randint(0, 256, (1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    views = grey(image)
    assert [v.shape for v in views] == [(1, 28, 28)] * 2
    pil_views = grey(Image.fromarray(image[0].numpy()))
    assert [v.shape for v in pil_views] == [(1, 28, 28)] * 2
    # Brightness-only jitter on a constant grey image scales it by a factor in [1 - 0.8, 1 + 0.8].
    bright = two_view(channels=1, image_size=8, **{**NO_COLOUR, "color_jitter_p": 1.0, "contrast": 0.0})
    const = torch.full((1, 8, 8), 100, dtype=torch.uint8)
    factors = torch.stack([bright(const)[0][0, 0, 0] * 0.2 + 0.3 for _ in range(20)]) / (100 / 255)
    assert ((factors >= 0.2 - 1e-4) & (factors <= 1.8 + 1e-4)).all() and factors.std() > 0


def test_grey_data_set_as_three_channels():
    # A grey image for a 3-channel encoder: the channel is repeated before the colour steps.
    image = torch.full((1, 32, 32), 128, dtype=torch.uint8)
    views = two_view(**NO_COLOUR)(image)
    assert views[0].shape == (3, 32, 32)


def test_blur_kernel_size_rule():
    assert blur_kernel_size(224, 0.1) == 23  # SimCLR/BYOL's 23 px kernel at 224
    assert blur_kernel_size(96, 0.1) == 9
    assert blur_kernel_size(28, 0.1) == 3 and blur_kernel_size(12, 0.1) == 3


@pytest.mark.parametrize("fields", [
    {"blur_p": (0.5, 0.5, 0.5)},
    {"solarize_p": (0.0, 0.1, 0.2)},
    {"num_views": 3},  # the default blur_p/solarize_p have 2 values
    {"blur_p": (1.5,)},
    {"blur_p": ()},
    {"crop_scale": (0.5, 0.2)},
    {"blur_sigma": (2.0, 0.1)},
    {"flip_p": 1.2},
    {"colour": 0.1},
])
def test_two_view_config_errors(fields):
    with pytest.raises(ValidationError):
        TwoViewAugmentation.Config(**fields)


def test_multicrop_sizes_and_order():
    cfg = MultiCropAugmentation.Config(global_crops=2, local_crops=3, local_size=16)
    aug = MultiCropAugmentation(cfg, image_size=32, channels=3, mean=MEAN3, std=STD3)
    assert aug.num_views == 5
    views = aug(rgb_image(48))
    assert [tuple(v.shape) for v in views] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 3
    torch.manual_seed(5)
    a = aug(rgb_image(48))
    torch.manual_seed(5)
    b = aug(rgb_image(48))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    grey = MultiCropAugmentation(MultiCropAugmentation.Config(local_crops=2, local_size=12), image_size=28,
                                 channels=1, mean=(0.3,), std=(0.2,))
    assert [tuple(v.shape) for v in grey(torch.zeros(1, 28, 28, dtype=torch.uint8))] == \
        [(1, 28, 28)] * 2 + [(1, 12, 12)] * 2


def test_multicrop_per_view_probabilities_and_errors():
    cfg = MultiCropAugmentation.Config(global_crops=2, local_crops=2, blur_p=(1.0, 0.1, 0.5, 0.5),
                                       solarize_p=(0.0, 0.2, 0.0, 0.0))
    aug = MultiCropAugmentation(cfg, image_size=32, channels=3, mean=MEAN3, std=STD3)
    assert v2.RandomSolarize in steps(aug.transforms[1])
    assert v2.RandomSolarize not in steps(aug.transforms[0]) and v2.RandomSolarize not in steps(aug.transforms[2])
    with pytest.raises(ValidationError):
        MultiCropAugmentation.Config(global_crops=2, local_crops=2, blur_p=(1.0, 0.1))
    with pytest.raises(ValidationError):
        MultiCropAugmentation.Config(local_scale=(0.0, 0.3))
    with pytest.raises(ValidationError):
        MultiCropAugmentation.Config(global_crops=0)


def test_as_a_data_set_transform():
    from jepaflow.datasets.synthetic import SyntheticShapesDataset

    data = SyntheticShapesDataset(SyntheticShapesDataset.Config(num_train=4, num_test=4, image_size=32, channels=3),
                            split="train", augment=True, transform=two_view())
    views, label = data[0]
    assert isinstance(views, list) and len(views) == 2 and views[0].shape == (3, 32, 32)
    assert isinstance(label, int) and not np.isnan(views[1].numpy()).any()
