"""Frozen features of an encoder, as the probes read them.

* ``layers="last"``: the encoder's output tokens ``(B, N, D)`` (after its final norm) pooled by the encoder's
  own :meth:`~jepaflow.interfaces.Encoder.pool` (the mean over tokens for the ViTs: I-JEPA has no [CLS] token and
  evaluates average-pooled patch representations, Assran et al., CVPR 2023, sec. 5) -> ``(B, D)``.
* ``layers="last4"``: the outputs of the last 4 blocks (:meth:`~jepaflow.interfaces.Encoder.forward_layers`,
  *before* the final norm), each pooled, concatenated -> ``(B, 4 D)``, the multi-layer features of the
  I-JEPA paper's evaluation. The final norm is not applied to each block's output, as in MSN's
  ``forward_blocks`` (facebookresearch/msn ``src/deit.py``; its ``linear_eval.py`` sets ``encoder.norm = None``;
  MSN shares I-JEPA's first author), whereas DINO's ``get_intermediate_layers`` (facebookresearch/dino
  ``vision_transformer.py``) normalizes each one. The linear and low-shot probes standardize every feature
  dimension afterwards (docs/probes.md).
* tokens, for the attentive probe: the last layer's output tokens ``(B, N, D)``, stored as float16.

The encoder runs in eval mode under ``torch.no_grad``, in float32, and is left in the mode it was in.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from jepaflow.errors import DataError, JepaflowError

#: blocks concatenated by ``layers="last4"``
LAST_BLOCKS = 4


def subset_indices(num_items: int, max_items: int | None) -> list[int]:
    """Indices of a deterministic subset of ``max_items`` items: evenly spaced over the data set.

    Evenly spaced rather than the first ``max_items``: folder data sets are stored class by class, and their
    first items would all share one label.
    """
    if max_items is None or max_items >= num_items:
        return list(range(num_items))
    return [(i * num_items) // max_items for i in range(max_items)]


def check_layers(encoder: nn.Module, layers: str) -> None:
    """Refuse, before any image is encoded, ``layers="last4"`` on an encoder that does not declare the
    ``intermediate_layers`` capability (:data:`jepaflow.interfaces.ENCODER_CAPABILITIES`) or has fewer than 4
    blocks (``depth``, when it declares ``transformer_dims``)."""
    if layers == "last":
        return
    if layers != "last4":
        raise ValueError(f"unknown layers {layers!r}")
    name = type(encoder).__name__
    fix = "probe with layers: last (--layers last)"
    if "intermediate_layers" not in getattr(encoder, "capabilities", ()):
        raise JepaflowError(f"layers=last4 needs the outputs of the last {LAST_BLOCKS} blocks, but {name} does not "
                            "declare the 'intermediate_layers' capability", fix)
    depth = getattr(encoder, "depth", None)
    if isinstance(depth, int) and depth < LAST_BLOCKS:
        raise JepaflowError(f"layers=last4 needs {LAST_BLOCKS} blocks, but this {name} has {depth}", fix)


def pooled_features(encoder: nn.Module, images: Tensor, layers: str = "last") -> Tensor:
    """``(B, C, H, W)`` images -> ``(B, F)`` features (module docstring): ``F = D`` for ``"last"``, ``4 D`` for
    ``"last4"``."""
    if layers == "last":
        return encoder.pool(encoder(images))
    check_layers(encoder, layers)
    try:
        outputs = encoder.forward_layers(images, LAST_BLOCKS)  # oldest first, each (B, N, D)
    except (TypeError, ValueError) as exc:  # declared but refused (e.g. fewer blocks than asked)
        raise JepaflowError(f"layers=last4 needs the outputs of the last {LAST_BLOCKS} blocks, but "
                            f"{type(encoder).__name__} cannot give them: {exc}",
                            "probe with layers: last (--layers last)") from None
    return torch.cat([encoder.pool(x) for x in outputs], dim=1)


@dataclass
class SplitFeatures:
    """What the probes read of one split.

    Attributes:
        labels: ``(N,)`` int64.
        pooled: ``(N, F)`` float32 pooled features, or None when not asked for.
        tokens: ``(N, T, D)`` float16 last-layer tokens, or None when not asked for.
    """

    labels: Tensor
    pooled: Tensor | None = None
    tokens: Tensor | None = None


@torch.no_grad()
def extract_features(
    encoder: nn.Module,
    dataset: torch.utils.data.Dataset,
    batch_size: int,
    device: torch.device | str,
    max_items: int | None = None,
    layers: str = "last",
    pooled: bool = True,
    tokens: bool = False,
    num_workers: int = 0,
) -> SplitFeatures:
    """Run ``encoder`` (already on ``device``) over ``dataset`` (items ``(image (C, H, W), label)``, read in order,
    capped by :func:`subset_indices`) and keep the pooled features and/or the last-layer tokens, on the CPU."""
    if not hasattr(encoder, "pool"):
        raise TypeError(f"{type(encoder).__name__} is not a jepaflow Encoder (it has no pool method)")
    device = torch.device(device)
    indices = subset_indices(len(dataset), max_items)
    loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=device.type == "cuda")
    was_training = encoder.training
    encoder.eval()
    labels = torch.empty(len(indices), dtype=torch.long)
    feats: Tensor | None = None
    toks: Tensor | None = None
    try:
        start = 0
        for images, batch_labels in loader:
            images = images.to(device, non_blocking=True)
            end = start + images.shape[0]
            last = None
            if tokens or (pooled and layers == "last"):
                last = encoder(images)  # (B, T, D), after the final norm
            if tokens:
                if toks is None:  # sizes known only now; kept on the host (tokens can be large)
                    toks = torch.empty(len(indices), *last.shape[1:], dtype=torch.float16)
                toks[start:end] = last.to("cpu", torch.float16)
            if pooled:
                f = encoder.pool(last) if layers == "last" else pooled_features(encoder, images, layers)
                if feats is None:
                    feats = torch.empty(len(indices), f.shape[1], dtype=torch.float32, device=device)
                feats[start:end] = f.float()
            labels[start:end] = torch.as_tensor(batch_labels, dtype=torch.long)
            start = end
    finally:
        encoder.train(was_training)
    if start == 0:
        raise DataError("cannot extract features from an empty data set", "check the data section")
    return SplitFeatures(labels, None if feats is None else feats.cpu(), toks)


__all__ = ["LAST_BLOCKS", "SplitFeatures", "check_layers", "extract_features", "pooled_features", "subset_indices"]
