"""Random patch masking: each image keeps a uniformly random subset of its patches (MAE).

He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022 (arXiv 2111.06377), sec. 3 "Masking":
patches are sampled uniformly at random without replacement and a high ratio (75%) of them is removed.
Reference code facebookresearch/mae ``models_mae.py:MaskedAutoencoderViT.random_masking``: per image, the
patches are shuffled by sorting uniform noise; the first ``int(N * (1 - mask_ratio))`` of the shuffled order are
kept, the rest are masked.

Here the shuffle is the same (one ``argsort`` of ``(B, N)`` uniform noise, drawn from the engine's generator), and
both index sets are then sorted ascending: the encoder sees its tokens in raster order (the decoder scatters them
back to their positions anyway, so the order changes nothing but makes the output canonical). Every image keeps
the same number of patches, so there is no padding.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field

from jepaflow.errors import JepaflowError
from jepaflow.interfaces import MaskBatch, Masker, PluginConfig

#: tolerance on ``N * (1 - mask_ratio)`` before flooring, so that float rounding (``10 * (1 - 0.9)`` is
#: ``0.9999999999999998``) does not drop a patch the exact arithmetic keeps.
_FLOOR_TOLERANCE = 1e-9


def num_visible(num_patches: int, mask_ratio: float) -> int:
    """Patches kept per image: ``floor(N * (1 - mask_ratio))``, the reference's ``int(L * (1 - mask_ratio))``
    (e.g. 49 of 196 at ratio 0.75; 12 of 49), made robust to float rounding."""
    return int(math.floor(num_patches * (1.0 - mask_ratio) + _FLOOR_TOLERANCE))


def random_masks(batch_size: int, num_patches: int, num_keep: int, generator: torch.Generator) -> MaskBatch:
    """Per-image uniformly random split of ``N`` patches into ``num_keep`` visible and ``N - num_keep`` masked.

    Args:
        batch_size: ``B``.
        num_patches: ``N``.
        num_keep: visible patches per image, ``0 < num_keep < N``.
        generator: source of the ``(B, N)`` uniform noise (row ``b`` is drawn before row ``b + 1``, so an image's
            mask does not depend on how many images follow it in the batch).
    Returns:
        :class:`MaskBatch` with ``context`` ``(B, num_keep)`` and ``targets`` ``(B, 1, N - num_keep)``, both
        int64 and sorted ascending; together they partition ``range(N)`` for every image; no padding.
    """
    noise = torch.rand(batch_size, num_patches, generator=generator)
    shuffle = noise.argsort(dim=1)  # small noise = kept (reference: "ascend: small is keep, large is remove")
    context = shuffle[:, :num_keep].sort(dim=1).values
    masked = shuffle[:, num_keep:].sort(dim=1).values
    # One target "block" holding every masked patch: the decoder predicts them all in one sequence.
    return MaskBatch(context=context, targets=masked.unsqueeze(1))


class RandomMasker(Masker):
    """MAE random masking: each image keeps a uniformly random ``1 - mask_ratio`` of its patches as context;
    all the others form one target block (He et al. 2022; facebookresearch/mae ``random_masking``)."""

    class Config(PluginConfig):
        mask_ratio: float = Field(
            0.75, gt=0, lt=1,
            description="fraction of patches removed per image (MAE paper sec. 3 and table 1: 0.75)",
        )

    def __init__(self, config: Config | None = None):
        self.config = config if config is not None else self.Config()

    def num_visible(self, grid_size: tuple[int, int]) -> int:
        return num_visible(grid_size[0] * grid_size[1], self.config.mask_ratio)

    def check(self, grid_size: tuple[int, int]) -> None:
        N = grid_size[0] * grid_size[1]
        keep = self.num_visible(grid_size)
        if not 0 < keep < N:
            what = "no patch stays visible" if keep == 0 else "no patch is masked"
            raise JepaflowError(
                f"masker (random): with mask_ratio={self.config.mask_ratio} on a {grid_size[0]}x{grid_size[1]} "
                f"patch grid ({N} patches) {what}",
                "choose masker.mask_ratio so that floor(N * (1 - mask_ratio)) is between 1 and N - 1",
            )

    def __call__(self, batch_size: int, grid_size: tuple[int, int], generator: torch.Generator) -> MaskBatch:
        self.check(grid_size)  # plain integer arithmetic: cheap enough to repeat per batch
        return random_masks(batch_size, grid_size[0] * grid_size[1], self.num_visible(grid_size), generator)
