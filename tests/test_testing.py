"""The public contract checkers (``jepaflow.testing``): every registered masker, encoder, predictor and view
sampler passes them (parametrized over the registry, so a new plugin is checked without a new test), and each
rule catches a plugin that breaks it, naming the plugin and the rule."""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch
from torch import Tensor

from jepaflow.encoders.vit import VisionTransformerEncoder
from jepaflow.errors import ContractError
from jepaflow.interfaces import MaskBatch, Masker
from jepaflow.maskers.random import RandomMasker
from jepaflow.registry import default_registry
from jepaflow.testing import (
    check_encoder,
    check_mask_batch,
    check_masker,
    check_predictor,
    check_view_sampler,
    plugin_label,
)

# Small settings of the built-in plugins (a plugin not listed is checked with its default config). Several
# entries check several modes of one plugin.
MASKERS: dict[str, list[dict[str, Any]]] = {
    "multiblock": [{}, {"mode": "fixed"}, {"mode": "fixed", "context_fill": "subsample"}, {"allow_overlap": True}],
    "random": [{}, {"mask_ratio": 0.6}],
}
ENCODERS: dict[str, dict[str, Any]] = {
    "vit": {"size": "tiny", "patch_size": 8, "img_size": 32, "embed_dim": 48, "depth": 2, "num_heads": 2},
    "timm_vit": {"model_name": "vit_tiny_patch16_224", "img_size": 16,
                 "model_kwargs": {"patch_size": 4, "embed_dim": 48, "num_heads": 3, "depth": 2}},
    "timm_cnn": {"model_name": "resnet18", "img_size": 32},
}
PREDICTORS: dict[str, dict[str, Any]] = {
    "vit_predictor": {"embed_dim": 32, "depth": 1, "num_heads": 2},
    "mae_decoder": {"embed_dim": 32, "depth": 1, "num_heads": 2},
}
VIEWS: dict[str, dict[str, Any]] = {"multicrop": {"local_size": 16, "local_crops": 2}}


def registered(kind: str) -> list[str]:
    return default_registry().names(kind)


def plugin(kind: str, name: str) -> Any:
    return default_registry().get(kind, name)


@pytest.mark.parametrize("name", registered("masker"))
def test_every_registered_masker_keeps_the_contract(name):
    cls = plugin("masker", name)
    for settings in MASKERS.get(name, [{}]):
        masker = cls(cls.Config(**settings))
        for grid in ((14, 14), (8, 12)):
            masks = check_masker(masker, grid, batch_size=8, name=name)
            assert masks.context.shape[0] == 8


@pytest.mark.parametrize("name", registered("encoder"))
def test_every_registered_encoder_keeps_the_contract(name):
    cls = plugin("encoder", name)
    torch.manual_seed(0)
    check_encoder(cls(cls.Config(**ENCODERS.get(name, {}))), name=name)


@pytest.mark.parametrize("name", registered("predictor"))
def test_every_registered_predictor_keeps_the_contract(name):
    cls = plugin("predictor", name)
    torch.manual_seed(0)
    encoder = VisionTransformerEncoder(VisionTransformerEncoder.Config(**ENCODERS["vit"]))
    check_predictor(cls(cls.Config(**PREDICTORS.get(name, {})), encoder=encoder), encoder, name=name)


@pytest.mark.parametrize("name", registered("view"))
def test_every_registered_view_sampler_keeps_the_contract(name):
    cls = plugin("view", name)
    for channels in (1, 3):
        sampler = cls(cls.Config(**VIEWS.get(name, {})), image_size=32, channels=channels,
                      mean=(0.5,) * channels, std=(0.25,) * channels)
        check_view_sampler(sampler, image_size=32, channels=channels, name=name)


# ------------------------------------------------------------------------------------------------ masker rules
class EditedMasker(Masker):
    """The random masker's output, edited by ``edit`` to break one rule."""

    def __init__(self, edit, allows_overlap: bool = False):
        self.inner = RandomMasker(RandomMasker.Config(mask_ratio=0.5))
        self.edit = edit
        self.allows_overlap = allows_overlap

    def __call__(self, batch_size: int, grid_size: tuple[int, int], generator: torch.Generator) -> Any:
        return self.edit(self.inner(batch_size, grid_size, generator))


def _set(masks: MaskBatch, **fields: Tensor | None) -> MaskBatch:
    return MaskBatch(**{**masks.__dict__, **fields})


def _overlap(m: MaskBatch) -> MaskBatch:
    targets = m.targets.clone()
    targets[1, 0, 0] = m.context[1, 0]
    return _set(m, targets=targets)


BROKEN = [
    ("out of range", lambda m: _set(m, context=m.context.masked_fill(m.context == m.context.max(), 64)),
     "holds patch index 64, outside [0, 64)"),
    ("negative", lambda m: _set(m, targets=m.targets - 1), "outside [0, 64)"),
    ("int32", lambda m: _set(m, context=m.context.int()), "dtype torch.int32"),
    ("targets without M", lambda m: _set(m, targets=m.targets[:, 0]), "expected (B, M, K_tgt)"),
    ("wrong batch", lambda m: _set(m, context=m.context[:3]), "B = 4"),
    ("valid not bool", lambda m: _set(m, context_valid=torch.ones_like(m.context)), "context_valid must be a bool"),
    ("valid wrong shape", lambda m: _set(m, targets_valid=torch.ones(4, 1, 2, dtype=torch.bool)),
     "targets_valid must be a bool"),
    ("empty context", lambda m: _set(m, context_valid=torch.arange(4)[:, None].expand_as(m.context) != 2),
     "image 2 of the batch has an empty context"),
    ("overlap", _overlap, "is both in the context and in a target"),
    ("not a MaskBatch", lambda m: (m.context, m.targets), "not a jepaflow.interfaces.MaskBatch"),
]


@pytest.mark.parametrize("edit,rule", [(e, r) for _, e, r in BROKEN], ids=[i for i, _, _ in BROKEN])
def test_each_masker_rule_is_enforced_and_named(edit, rule):
    with pytest.raises(ContractError) as info:
        check_masker(EditedMasker(edit), (8, 8), batch_size=4)
    message = str(info.value)
    assert rule in message, message
    assert re.search(r"masker class \S*EditedMasker breaks the masker contract", message), message
    assert "jepaflow.testing.check_masker()" in message  # the fix says how to reproduce it


def test_overlap_is_allowed_when_declared_and_padding_is_ignored():
    check_masker(EditedMasker(_overlap, allows_overlap=True), (8, 8), batch_size=4)
    # a padded target entry (index 0, invalid) may coincide with a context patch
    def pad_into_context(m: MaskBatch) -> MaskBatch:
        t = m.targets.clone()
        t[:, 0, -1] = m.context[:, 0]
        valid = torch.ones_like(t, dtype=torch.bool)
        valid[:, 0, -1] = False
        return _set(m, targets=t, targets_valid=valid)

    check_masker(EditedMasker(pad_into_context), (8, 8), batch_size=4)


def test_a_masker_exception_is_one_line_naming_the_plugin():
    class Raising(Masker):
        def __call__(self, batch_size, grid_size, generator):
            raise IndexError("index 99 is out of bounds")

    with pytest.raises(ContractError, match=r"masker class .*Raising failed on the 8x8 patch grid: IndexError: "
                                            r"index 99 is out of bounds"):
        check_masker(Raising(), (8, 8))


def test_labels_come_from_the_registry():
    import jepaflow
    from jepaflow.maskers.multiblock import MultiBlockMasker

    label = plugin_label(MultiBlockMasker(), "masker")
    assert label == f"masker 'multiblock' (package jepaflow {jepaflow.__version__})"
    with pytest.raises(ContractError, match=r"masker 'multiblock' \(package jepaflow"):
        check_mask_batch("nope", (4, 4), 2, label)


# ------------------------------------------------------------------------------------------------ other kinds
def test_an_encoder_whose_padding_leaks_into_attention_is_caught():
    class Leaky(VisionTransformerEncoder):
        def forward(self, images, keep=None, keep_valid=None):
            return super().forward(images, keep)  # ignores keep_valid: padded entries attend

    torch.manual_seed(0)
    with pytest.raises(ContractError, match="padded keep entry .* changes the tokens of the valid entries"):
        check_encoder(Leaky(Leaky.Config(**ENCODERS["vit"])))


def test_an_encoder_with_the_wrong_token_count_or_capability_is_caught():
    class Pooled(VisionTransformerEncoder):
        def forward(self, images, keep=None, keep_valid=None):
            return super().forward(images, keep, keep_valid)[:, :1]

    torch.manual_seed(0)
    with pytest.raises(ContractError, match=r"forward\(images\) has shape \(2, 1, 48\), expected \(2, 16, 48\)"):
        check_encoder(Pooled(Pooled.Config(**ENCODERS["vit"])))

    class Boasting(VisionTransformerEncoder):
        capabilities = frozenset({"drop_patches", "teleport"})

    with pytest.raises(ContractError, match="capabilities \\['teleport'\\] are unknown"):
        check_encoder(Boasting(Boasting.Config(**ENCODERS["vit"])))


def test_a_view_sampler_with_the_wrong_number_of_views_is_caught():
    from jepaflow.views.two_view import TwoViewAugmentation

    class OneShort(TwoViewAugmentation):
        def __call__(self, image):
            return super().__call__(image)[:-1]

    sampler = OneShort(OneShort.Config(), image_size=32, channels=3, mean=(0.5,) * 3, std=(0.25,) * 3)
    with pytest.raises(ContractError, match="must return a list of num_views = 2 tensors, got 1 items"):
        check_view_sampler(sampler, 32, 3)


def test_the_tutorials_hand_built_mask_batch_keeps_the_contract():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "writing-a-plugin.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", doc, flags=re.S)
    example = next(b for b in blocks if "MaskBatch(" in b)
    scope: dict[str, Any] = {}
    exec(example, scope)
    check_mask_batch(scope["masks"], (2, 4), batch_size=2)
