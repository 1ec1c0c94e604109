"""The plugin interfaces the engine talks to: Encoder, Predictor, Masker, ViewSampler, Head, TargetUpdater,
Objective and Dataset.

The engine (``jepaflow.engine``) knows these classes and nothing else about a method. A method is an
:class:`Objective` plus the components it declares in :attr:`Objective.requires`; each component kind is a
plugin group (``jepaflow.encoders``, ``jepaflow.predictors``, ``jepaflow.maskers``, ``jepaflow.views``,
``jepaflow.heads``, ``jepaflow.target_updaters``, ``jepaflow.objectives``, ``jepaflow.datasets``).

Every plugin class carries a pydantic ``Config`` model (its fields are what a recipe may set under the
plugin's section) and is constructed as ``PluginClass(config, **context)``, where ``context`` is the small,
documented set of keyword arguments of its kind (see each base class). Constructors never see the recipe tree.

Shapes used throughout: ``B`` batch, ``N`` patches in the grid (``H_p * W_p``), ``K`` kept patches,
``M`` target blocks, ``D`` embedding width.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar

import torch
from pydantic import ConfigDict
from torch import Tensor, nn

from jepaflow.strict import StrictModel


class PluginConfig(StrictModel):
    """Base of every plugin's config model: unknown fields are errors, not silently ignored, and values are
    strict (``true`` is not an int, ``"2"`` not a number; an int is a float and a list a tuple): see
    :mod:`jepaflow.strict`. Numbers are finite and integers fit in 64 bits; give every number field a range
    (``Field(ge=..., le=...)``, or a shared range type of :mod:`jepaflow.fields`): a value that validates should
    also build."""

    model_config = ConfigDict(protected_namespaces=())


# --------------------------------------------------------------------------------------------------------------
# Data carried from the DataLoader to the objective
# --------------------------------------------------------------------------------------------------------------


@dataclass
class MaskBatch:
    """Patch indices produced by a :class:`Masker` for one batch.

    Attributes:
        context: ``(B, K_ctx)`` int64 indices (row-major over the patch grid) the context encoder sees.
        targets: ``(B, M, K_tgt)`` int64 indices of the ``M`` target blocks.
        context_valid: ``(B, K_ctx)`` bool, False where ``context`` is padding; ``None`` means all valid.
        targets_valid: ``(B, M, K_tgt)`` bool, False where ``targets`` is padding; ``None`` means all valid.

    Padding entries hold a valid index (0) so that gathers never go out of range; consumers must honour the
    ``*_valid`` masks (attention masks for the context, loss weights for the targets).
    """

    context: Tensor
    targets: Tensor
    context_valid: Tensor | None = None
    targets_valid: Tensor | None = None

    def to(self, device: torch.device | str, non_blocking: bool = False) -> MaskBatch:
        return replace(
            self,
            **{
                f.name: (v.to(device, non_blocking=non_blocking) if isinstance(v, Tensor) else v)
                for f in fields(self)
                for v in [getattr(self, f.name)]
            },
        )

    def pin_memory(self) -> MaskBatch:  # called by DataLoader(pin_memory=True)
        return replace(self, **{f.name: getattr(self, f.name).pin_memory() for f in fields(self)
                                if isinstance(getattr(self, f.name), Tensor)})


@dataclass
class Batch:
    """One training batch, as collated by the engine.

    Attributes:
        images: ``(B, C, H, W)`` float images, normalized (with a view sampler: the first view).
        labels: ``(B,)`` int64 labels when the data set has them (never used for training), else ``None``.
        masks: the masker's output when the recipe has a masker, else ``None``.
        views: with a view sampler, one ``(B, C, H_v, W_v)`` tensor per view (sizes may differ between views,
            e.g. global and local crops), else ``None``.
        extras: free room for plugins of future kinds, moved to the device with the batch.
    """

    images: Tensor
    labels: Tensor | None = None
    masks: MaskBatch | None = None
    views: list[Tensor] | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        def move(v: Any) -> Any:
            if isinstance(v, (Tensor, MaskBatch)):
                return v.to(device, non_blocking=non_blocking)
            return v

        return Batch(
            images=move(self.images),
            labels=move(self.labels),
            masks=move(self.masks),
            views=None if self.views is None else [move(v) for v in self.views],
            extras={k: move(v) for k, v in self.extras.items()},
        )

    def __len__(self) -> int:
        return self.images.shape[0]

    def pin_memory(self) -> Batch:  # called by DataLoader(pin_memory=True)
        return Batch(
            images=self.images.pin_memory(),
            labels=None if self.labels is None else self.labels.pin_memory(),
            masks=None if self.masks is None else self.masks.pin_memory(),
            views=None if self.views is None else [v.pin_memory() for v in self.views],
            extras={k: v.pin_memory() if hasattr(v, "pin_memory") else v for k, v in self.extras.items()},
        )


@dataclass
class ObjectiveOutput:
    """What :meth:`Objective.forward` returns.

    ``loss`` is a scalar tensor to back-propagate. ``metrics`` are detached scalar tensors (left on the
    device: the engine reads them only every ``log_every`` steps, so that no step waits on the host).
    """

    loss: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------------------
# Interfaces
# --------------------------------------------------------------------------------------------------------------


#: What an encoder may be able to do beyond images -> tokens and ``pool``: :attr:`Encoder.capabilities` lists the
#: ones it supports, :attr:`Objective.needs` the ones a method uses, and ``load_recipe`` checks one against the other.
ENCODER_CAPABILITIES: dict[str, str] = {
    "drop_patches": "encode only the patches at given indices (forward's keep / keep_valid)",
    "intermediate_layers": "return the outputs of its last blocks (forward_layers)",
    "mask_token": "replace masked patch embeddings by a mask token (forward_masked)",
    "transformer_dims": "expose its depth and number of attention heads (depth, num_heads)",
}


class Plugin:
    """Mixin shared by every plugin class: its ``Config`` model. The class docstring's first paragraph is what
    ``jepaflow plugins show`` prints."""

    Config: ClassVar[type[PluginConfig]] = PluginConfig


class Encoder(nn.Module, Plugin, abc.ABC):
    """Maps images to patch tokens.

    Constructed as ``EncoderClass(config)``.

    ``forward(images, keep=None, keep_valid=None)``:
        images: ``(B, C, H, W)``.
        keep: ``(B, K)`` int64 patch indices to keep (the context), or ``None`` for all ``N`` patches.
        keep_valid: ``(B, K)`` bool, False for padded entries of ``keep`` (masked out of attention).
        returns: ``(B, K, D)`` tokens (``(B, N, D)`` when ``keep`` is None), after the final norm.

    ``capabilities`` names what it supports beyond that (keys of :data:`ENCODER_CAPABILITIES`): ``drop_patches``
    (``keep`` honoured, padded entries masked out of attention), ``intermediate_layers`` (:meth:`forward_layers`),
    ``mask_token`` (:meth:`forward_masked`), ``transformer_dims`` (``depth`` and ``num_heads`` attributes). Every
    encoder pools (:meth:`pool`). ``jepaflow.testing.check_encoder`` checks an encoder against what it declares.
    """

    embed_dim: int
    patch_size: int
    grid_size: tuple[int, int]
    in_chans: int
    capabilities: ClassVar[frozenset[str]] = frozenset()
    #: recompute block activations in backward (``train.grad_checkpointing``); see set_grad_checkpointing
    grad_checkpointing: bool = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Keep only block inputs in the forward pass and recompute the rest in backward (less activation memory,
        about one more forward). Encoders that cannot do it raise TypeError."""
        raise TypeError(f"{type(self).__name__} does not support gradient checkpointing")

    @property
    def num_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    @abc.abstractmethod
    def forward(self, images: Tensor, keep: Tensor | None = None, keep_valid: Tensor | None = None) -> Tensor:
        ...

    def pool(self, tokens: Tensor) -> Tensor:
        """Global features ``(B, D)`` from tokens ``(B, N, D)``: the mean over tokens (I-JEPA's linear-probe
        pooling; the global average pool of a CNN's feature map)."""
        return tokens.mean(dim=1)

    def forward_layers(self, images: Tensor, layers: int) -> list[Tensor]:
        """The outputs ``(B, N, D)`` of the last ``layers`` blocks (before the final norm), for methods whose
        targets use intermediate layers. Encoders that cannot expose them raise TypeError."""
        raise TypeError(f"{type(self).__name__} does not expose intermediate layers")

    def forward_masked(self, images: Tensor, mask: Tensor, mask_token: Tensor) -> Tensor:
        """BEiT/data2vec-style input masking: the patch embeddings where ``mask`` ``(B, N)`` is True are replaced
        by ``mask_token`` ``(D,)`` (owned by the objective) before position embeddings are added; all ``N`` tokens
        go through the blocks; returns ``(B, N, D)`` after the final norm. Encoders that cannot do it raise
        TypeError."""
        raise TypeError(f"{type(self).__name__} does not support input masking with a mask token")


class Predictor(nn.Module, Plugin, abc.ABC):
    """Predicts target-position representations from context tokens.

    Constructed as ``PredictorClass(config, encoder=encoder)``: it reads ``encoder.embed_dim``,
    ``encoder.grid_size`` and, when present, ``encoder.num_heads``.

    ``forward(context_tokens, context_idx, target_idx, context_valid=None, target_valid=None)``:
        context_tokens: ``(B, K_ctx, D_enc)`` encoder outputs at ``context_idx``.
        context_idx: ``(B, K_ctx)`` int64.
        target_idx: ``(B, M, K_tgt)`` int64: ``M`` target blocks, each predicted in its own sequence.
        context_valid: ``(B, K_ctx)`` bool or None; padded context tokens are masked out of attention.
        target_valid: ``(B, M, K_tgt)`` bool or None; padded target queries are masked out as keys.
        returns: ``(B, M, K_tgt, D_out)`` predictions (``D_out`` is ``out_dim``, the encoder width by default).
    """

    out_dim: int
    #: recompute block activations in backward (``train.grad_checkpointing``); see set_grad_checkpointing
    grad_checkpointing: bool = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """As :meth:`Encoder.set_grad_checkpointing`; predictors that cannot do it raise TypeError."""
        raise TypeError(f"{type(self).__name__} does not support gradient checkpointing")

    @abc.abstractmethod
    def forward(
        self,
        context_tokens: Tensor,
        context_idx: Tensor,
        target_idx: Tensor,
        context_valid: Tensor | None = None,
        target_valid: Tensor | None = None,
    ) -> Tensor:
        ...


class Masker(Plugin, abc.ABC):
    """Samples context and target patch indices for a batch.

    Constructed as ``MaskerClass(config)``. Runs inside the DataLoader's collate function (so on CPU, in
    worker processes); the engine passes a generator seeded from (recipe seed, global step, slot), where the slot
    ``rank * accum_steps + micro`` numbers the step's micro-batches, which makes the masks of a step the same
    whatever the number of workers, after a resume, and between DDP and gradient accumulation.

    ``__call__(batch_size, grid_size, generator) -> MaskBatch``

    The contract (``jepaflow.testing.check_masker``, run by ``validate``, ``masks`` and before training): int64
    indices in ``[0, N)``, ``context (B, K_ctx)`` and ``targets (B, M, K_tgt)`` with ``K_ctx, M, K_tgt >= 1``, the
    ``*_valid`` masks bool of the same shapes (or None), at least one valid context patch per image, and no patch
    both in the context and a target of the same image unless ``allows_overlap`` is True.
    """

    #: True when the context may include target patches (e.g. a masker's ``allow_overlap`` setting).
    allows_overlap: bool = False

    @abc.abstractmethod
    def __call__(self, batch_size: int, grid_size: tuple[int, int], generator: torch.Generator) -> MaskBatch:
        ...

    def check(self, grid_size: tuple[int, int]) -> None:
        """Raise :class:`jepaflow.errors.JepaflowError` if no valid masks exist for this grid. The engine calls it
        before starting the DataLoader, so that the error is reported cleanly rather than from a worker."""


class ViewSampler(Plugin, abc.ABC):
    """Makes the augmented views of one image, for invariance methods (SimCLR, VICReg, BYOL, LeJEPA).

    Constructed as ``ViewSamplerClass(config, image_size=, channels=, mean=, std=)`` (from the data section).
    It replaces the data set's own transform: ``__call__(image)`` receives what that transform would (a PIL
    image or a ``(C, H, W)`` uint8 tensor) and returns a list of ``num_views`` normalized float tensors
    ``(C, H_v, W_v)``. Its randomness comes from torch's global generator, which the engine seeds per item.
    """

    num_views: int

    @abc.abstractmethod
    def __call__(self, image: Any) -> list[Tensor]:
        ...


class Head(nn.Module, Plugin, abc.ABC):
    """A small network on pooled features (projector, expander, prediction MLP).

    Constructed as ``HeadClass(config, in_dim=...)``: the ``projector`` section gets the encoder width, the
    ``prediction_head`` section the projector's ``out_dim``. ``forward((B, in_dim)) -> (B, out_dim)``.
    """

    out_dim: int

    @abc.abstractmethod
    def forward(self, x: Tensor) -> Tensor:
        ...


class TargetUpdater(Plugin, abc.ABC):
    """Updates a target network from its online counterpart after every optimizer step.

    Constructed as ``TargetUpdaterClass(config)``. The engine calls ``update`` with the pairs returned by
    :meth:`Objective.target_pairs`, the 0-based index of the step just taken and the schedule length.

    ``update(pairs, step, total_steps) -> dict[str, float]`` returns scalars to log (e.g. the momentum).
    """

    @abc.abstractmethod
    def update(self, pairs: list[tuple[nn.Module, nn.Module]], step: int, total_steps: int) -> dict[str, float]:
        ...


class Objective(nn.Module, Plugin, abc.ABC):
    """A self-supervised method: owns its modules, computes the loss of a batch.

    Constructed as ``ObjectiveClass(config, encoder=..., predictor=..., projector=..., prediction_head=...)``,
    with exactly the module components named in :attr:`requires` passed as keyword arguments. Components that are
    not modules (``"masker"``, ``"views"``, ``"target_updater"``) are used by the engine around the objective;
    declaring them makes the recipe validator demand the matching recipe section.
    """

    #: recipe sections this method needs, checked before anything is built.
    requires: ClassVar[frozenset[str]] = frozenset({"encoder"})
    #: encoder capabilities this method uses (keys of :data:`ENCODER_CAPABILITIES`), checked against the recipe's
    #: encoder's ``capabilities`` by ``load_recipe``.
    needs: ClassVar[frozenset[str]] = frozenset()

    @abc.abstractmethod
    def forward(self, batch: Batch) -> ObjectiveOutput:
        ...

    def target_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """``(online, target)`` module pairs for the :class:`TargetUpdater`; empty when there is none."""
        return []

    @abc.abstractmethod
    def encoders(self) -> dict[str, Encoder]:
        """The method's encoders by role, e.g. ``{"context": ..., "target": ...}``, for ``load_encoder``."""

    @abc.abstractmethod
    def representation_encoder(self) -> Encoder:
        """The encoder whose features are evaluated by the probes (I-JEPA: the target encoder)."""


class Dataset(torch.utils.data.Dataset, Plugin, abc.ABC):
    """An image data set.

    Constructed as ``DatasetClass(config, split=split, augment=augment, transform=None)``: ``split`` is "train"
    or "test"; ``augment`` True gives the pretraining transform (I-JEPA: RandomResizedCrop only), False a
    deterministic resize + centre crop (for probes); a ``transform`` (e.g. a :class:`ViewSampler`) replaces
    either and receives the decoded image (PIL or ``(C, H, W)`` uint8), its output becoming the item's image. ``__getitem__(i)`` returns ``(image, label)``: a ``(C, H, W)`` float
    tensor, normalized, and an int (-1 when the data set has no labels; ``num_classes`` is then None).
    Unreadable items are skipped and counted in ``skipped`` rather than raising."""

    num_classes: int | None
    channels: int
    image_size: int
