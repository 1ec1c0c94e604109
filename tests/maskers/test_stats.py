"""mask_statistics on hand-made masks with known answers; render_masks writes a picture."""

from __future__ import annotations

import pytest
import torch

from jepaflow.cli.masks import render_masks
from jepaflow.interfaces import MaskBatch
from jepaflow.maskers.multiblock import MultiBlockMasker
from jepaflow.maskers.stats import dense_masks, mask_statistics

G3 = (3, 3)


def hand_made() -> MaskBatch:
    """3x3 grid, 2 images, 2 target blocks; padding (index 0, invalid) in a context and in a target.

    image 0: context {0, 1, 2}; targets {4, 5}, {7, 8}
    image 1: context {0, 3};    targets {3, 4}, {8}
    """
    return MaskBatch(
        context=torch.tensor([[0, 1, 2], [0, 3, 0]]),
        targets=torch.tensor([[[4, 5], [7, 8]], [[3, 4], [8, 0]]]),
        context_valid=torch.tensor([[True, True, True], [True, True, False]]),
        targets_valid=torch.tensor([[[True, True], [True, True]], [[True, True], [True, False]]]),
    )


def test_dense_masks_honour_padding():
    ctx, tgt = dense_masks(hand_made(), G3)
    assert ctx.tolist() == [[1, 1, 1, 0, 0, 0, 0, 0, 0], [1, 0, 0, 1, 0, 0, 0, 0, 0]]
    assert tgt[1, 1].nonzero().flatten().tolist() == [8]  # the padded 0 is not a target patch
    assert tgt[0].any(0).nonzero().flatten().tolist() == [4, 5, 7, 8]


def test_statistics_of_hand_made_masks():
    s = mask_statistics(hand_made(), G3)
    assert s["num_images"] == 2
    assert s["context_mean"] == pytest.approx(2.5) and (s["context_min"], s["context_max"]) == (2, 3)
    assert s["target_mean"] == pytest.approx(7 / 4)  # blocks of 2, 2, 2, 1 valid patches
    assert s["target_union_mean"] == pytest.approx(3.5)  # unions of 4 and 3 patches
    assert s["target_coverage"] == pytest.approx((4 / 9 + 3 / 9) / 2)
    assert s["overlap"] == pytest.approx(1 / 7)  # patch 3 of image 1, out of 7 union-of-target patches
    ctx_freq = torch.tensor([[1.0, 0.5, 0.5], [0.5, 0, 0], [0, 0, 0]], dtype=torch.float64)
    tgt_freq = torch.tensor([[0, 0, 0], [0.5, 1.0, 0.5], [0, 0.5, 1.0]], dtype=torch.float64)
    assert torch.equal(s["context_freq"], ctx_freq) and torch.equal(s["target_freq"], tgt_freq)
    assert (s["never_context"], s["never_target"], s["never_context_or_target"]) == (5, 4, 1)  # patch 6


def test_no_valid_masks_means_all_valid():
    m = hand_made()
    full = MaskBatch(context=torch.tensor([[0, 1, 2], [0, 3, 5]]), targets=m.targets[:, :1])
    s = mask_statistics(full, G3)
    assert (s["context_min"], s["context_max"], s["target_mean"]) == (3, 3, 2.0)


def test_pooling_batches_equals_one_concatenated_batch():
    masker = MultiBlockMasker(MultiBlockMasker.Config(mode="fixed"))
    g = torch.Generator().manual_seed(0)
    a, b = masker(4, (14, 14), g), masker(4, (14, 14), g)
    pooled = mask_statistics([a, b], (14, 14))
    single_a = mask_statistics(a, (14, 14))
    assert pooled["num_images"] == 8
    ca, cb = a.context_valid.sum(1), b.context_valid.sum(1)
    assert pooled["context_mean"] == pytest.approx(float(torch.cat([ca, cb]).double().mean()))
    assert torch.allclose(
        pooled["context_freq"], (single_a["context_freq"] + mask_statistics(b, (14, 14))["context_freq"]) / 2
    )
    with pytest.raises(ValueError):
        mask_statistics([], (14, 14))


def test_official_masks_never_cover_the_last_row_and_column():
    masker = MultiBlockMasker(MultiBlockMasker.Config())
    g = torch.Generator().manual_seed(0)
    s = mask_statistics([masker(64, (14, 14), g) for _ in range(5)], (14, 14))
    assert s["overlap"] == 0.0
    assert s["never_context_or_target"] == 14 + 14 - 1
    assert s["context_freq"][-1].sum() == 0 and s["target_freq"][:, -1].sum() == 0
    assert 0.3 < s["target_coverage"] < 0.6


@pytest.mark.parametrize("channels,normalized", [(3, False), (1, True)])
def test_render_masks_writes_a_png(tmp_path, channels, normalized):
    masker = MultiBlockMasker(MultiBlockMasker.Config(mode="fixed", min_keep=4))
    masks = masker(3, (8, 8), torch.Generator().manual_seed(0))
    images = torch.rand(3, channels, 32, 32, generator=torch.Generator().manual_seed(1))
    if normalized:
        images = (images - 0.5) / 0.25
    out = render_masks(images, masks, (8, 8), 4, tmp_path / "sub" / "masks.png", max_images=2)
    data = out.read_bytes()
    assert out == tmp_path / "sub" / "masks.png"
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
