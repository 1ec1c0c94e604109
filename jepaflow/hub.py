"""Load a pretrained encoder from a checkpoint file: ``jepaflow.load_encoder(path)``.

Two formats are understood, told apart by their content (not their file name):

* **official I-JEPA checkpoints** (facebookresearch/ijepa ``src/train.py:save_checkpoint``): a dict with the
  state dicts ``encoder`` (the context encoder), ``target_encoder`` and ``predictor`` (keys prefixed with
  ``module.`` because the models were wrapped in DistributedDataParallel), plus ``opt``, ``scaler``, ``epoch``,
  ``loss``, ``batch_size``, ``world_size`` and ``lr``. The architecture is not stored, so it is read off the
  tensor shapes and rebuilt as a :class:`~jepaflow.encoders.vit.VisionTransformerEncoder`, whose parameter
  names equal the reference ViT's (``src/models/vision_transformer.py:VisionTransformer``). A bare ViT state dict
  (the ``encoder`` dict on its own) is accepted too.
* **jepaflow checkpoints** (written by the engine): a dict with ``format == "jepaflow-checkpoint"``, the
  resolved ``recipe`` (as :meth:`jepaflow.config.Recipe.to_dict` returns it) and the ``objective`` state dict.
  The objective is rebuilt from the recipe, so any encoder plugin round-trips. A run folder stands for its
  ``checkpoints/last.pt``.

The encoder comes back in eval mode with ``requires_grad`` False: it is meant for feature extraction. As in
the paper's evaluations (Assran et al. 2023, sec. 5) and the official code, the default I-JEPA encoder is the
target (EMA) encoder.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch import Tensor, nn

from jepaflow.checkpoints import (
    EXTRA_STATE_SUFFIX,
    check_finite,
    check_readable_file,
    check_state_matches,
    describe,
    load_state_dict_checked,
    read_checkpoint,
    strip_wrapper_prefixes,
)
from jepaflow.checkpoints import FORMAT as JEPAFLOW_FORMAT
from jepaflow.errors import CheckpointError, JepaflowError, clip
from jepaflow.interfaces import Encoder

#: role -> key of that encoder's state dict in an official I-JEPA checkpoint.
OFFICIAL_ROLES: dict[str, str] = {"target": "target_encoder", "context": "encoder"}

_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.")


# ----------------------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------------------


def load_encoder(
    path: str | Path,
    which: str | None = None,
    img_size: int | None = None,
    map_location: Any = "cpu",
    *,
    num_heads: int | None = None,
) -> Encoder:
    """A pretrained encoder, frozen, in eval mode: ``images (B, C, H, W) -> tokens (B, N, D)``.

    Args:
        path: an official I-JEPA checkpoint (``.pth.tar``), a jepaflow checkpoint (``.pt``), or a jepaflow run
            folder (its ``checkpoints/last.pt`` is read).
        which: the encoder's role. Official checkpoints: ``"target"`` (default, the EMA encoder the paper
            evaluates) or ``"context"``. jepaflow checkpoints: a key of the objective's ``encoders()``
            (I-JEPA: ``"context"``/``"target"``); None means the objective's ``representation_encoder()``.
        img_size: run at this (square) image side instead of the training one. Fixed sin-cos position tables
            are recomputed exactly for the new grid; learned tables are resized bicubically.
        map_location: passed to :func:`torch.load`; when it is a device (or its name) the encoder is also
            moved there.
        num_heads: attention heads, needed only for an official checkpoint whose width is not one of the
            official ViT sizes (the heads cannot be read off the weights).
    Raises:
        JepaflowError: the file is missing, unreadable, not a checkpoint, holds Python objects other than
            tensors/numbers/text (never unpickled: the file is read with ``weights_only=True`` only), holds NaN or
            infinite weights, or does not match what is expected; the message names the file and the fix.
    """
    file = _resolve_path(path)
    ckpt = read_checkpoint(file, map_location)
    if isinstance(ckpt, dict) and ckpt.get("format") == JEPAFLOW_FORMAT:
        encoder = _encoder_from_jepaflow(ckpt, file, which)
    elif isinstance(ckpt, dict) and _is_official(ckpt):
        encoder = _encoder_from_official(ckpt, file, which, num_heads)
    else:
        raise JepaflowError(
            f"{file} is a PyTorch file but not an encoder checkpoint: expected an official I-JEPA checkpoint "
            f"(keys 'encoder'/'target_encoder'), a ViT state dict (key 'patch_embed.proj.weight') or a jepaflow "
            f"checkpoint (format {JEPAFLOW_FORMAT!r}); found {describe(ckpt)}",
            "pass the checkpoint written by I-JEPA's train.py, or a jepaflow run folder / its checkpoints/last.pt",
        )
    if img_size is not None:
        encoder = with_img_size(encoder, img_size, source=str(file))
    if isinstance(map_location, (str, torch.device)):
        encoder = encoder.to(map_location)
    encoder.eval()
    encoder.requires_grad_(False)
    return encoder


def with_img_size(encoder: Encoder, img_size: int, source: str = "the encoder") -> Encoder:
    """The same encoder rebuilt for ``img_size x img_size`` images (a new module; ``encoder`` is unchanged).

    The encoder's plugin config must have an ``img_size`` field. Every weight is copied; a position table
    whose shape depends on the grid is recomputed when it is a fixed buffer (sin-cos: exact at any size) and
    resized as timm does (``resample_abs_pos_embed``: bicubic, antialiased) when it is a learned parameter.
    """
    config = getattr(encoder, "config", None)
    if config is None or "img_size" not in type(config).model_fields:
        raise JepaflowError(
            f"cannot change the image size of {type(encoder).__name__} from {source}: its config has no img_size",
            "leave img_size unset",
        )
    if config.img_size == img_size:
        return encoder
    update: dict[str, Any] = {"img_size": img_size}
    if "checkpoint" in type(config).model_fields:
        update["checkpoint"] = None  # init-only weights: everything is copied from `encoder` below
    try:
        new_config = type(config).model_validate({**config.model_dump(), **update})
    except ValidationError as exc:
        raise JepaflowError(
            f"img_size={img_size} does not suit the encoder of {source}: {_first_error(exc)}",
            f"pick a multiple of the patch size ({getattr(encoder, 'patch_size', '?')})",
        ) from None
    with torch.random.fork_rng(devices=[]):  # building re-initializes weights: leave the caller's RNG alone
        resized = type(encoder)(new_config)
    old_state = encoder.state_dict()
    new_state = resized.state_dict()
    param_names = {name for name, _ in resized.named_parameters()}
    state: dict[str, Tensor] = {}
    for key, target in new_state.items():
        value = old_state[key]
        if value.shape != target.shape:
            if key in param_names:
                # a learned table: resized as timm resizes its own tables (bicubic, antialiased)
                from timm.layers import resample_abs_pos_embed

                value = resample_abs_pos_embed(
                    value, new_size=list(resized.grid_size), old_size=list(encoder.grid_size), num_prefix_tokens=0
                )
            else:
                # a fixed buffer (sin-cos table): the new module computed the exact one for its grid
                value = target
        state[key] = value
    resized.load_state_dict(state, strict=True)
    resized.train(encoder.training)
    return resized


def infer_vit_config(state_dict: dict[str, Tensor], num_heads: int | None = None, source: str = "the state dict"):
    """The :class:`VisionTransformerEncoder` config that a reference-layout ViT state dict was made by.

    Read off the shapes (reference ``src/models/vision_transformer.py``):
    ``patch_embed.proj.weight (D, C, p, p)`` gives width, channels and patch; the highest ``blocks.{i}`` index
    the depth; ``blocks.0.mlp.fc1.weight (hidden, D)`` the MLP ratio; ``pos_embed (1, N, D)`` the training
    image side ``sqrt(N) * p``. The heads are not visible in any shape: they come from the official size of
    that width (tiny 192/3, small 384/6, base 768/12, large/huge/giant 16) unless ``num_heads`` is given.
    """
    from jepaflow.encoders.vit import VIT_SIZES, VisionTransformerEncoder

    def need(key: str, ndim: int) -> Tensor:
        value = state_dict.get(key)
        if not isinstance(value, Tensor) or value.dim() != ndim:
            found = "missing" if value is None else f"shape {tuple(getattr(value, 'shape', ()))}"
            raise JepaflowError(
                f"{source} is not a ViT state dict in the I-JEPA layout: {key!r} should be a {ndim}-D tensor "
                f"({found})",
                "pass an I-JEPA checkpoint (or its 'encoder'/'target_encoder' state dict)",
            )
        return value

    patch_w = need("patch_embed.proj.weight", 4)
    dim, in_chans, patch_h, patch = patch_w.shape
    if patch_h != patch:
        raise JepaflowError(f"{source}: non-square patches {patch_h}x{patch} are not supported")
    depth = 1 + max((int(m.group(1)) for k in state_dict if (m := _BLOCK_KEY.match(k))), default=-1)
    if depth == 0:
        raise JepaflowError(f"{source} has no transformer blocks (no 'blocks.<i>.' keys)")
    hidden = need("blocks.0.mlp.fc1.weight", 2).shape[0]
    n_tokens = need("pos_embed", 3).shape[1]
    side = math.isqrt(n_tokens)
    if side * side != n_tokens:
        raise JepaflowError(f"{source}: pos_embed has {n_tokens} positions, not a square grid")

    # The nearest official size names the model; what differs from it is given as explicit overrides.
    size = min(VIT_SIZES, key=lambda name: abs(VIT_SIZES[name][0] - dim))
    size_dim, size_depth, size_heads, size_ratio = VIT_SIZES[size]
    if num_heads is None:
        if size_dim != dim:
            known = ", ".join(f"{v[0]} ({k}, {v[2]} heads)" for k, v in VIT_SIZES.items())
            raise JepaflowError(
                f"{source}: width {dim} is not an official ViT size, so its number of attention heads is unknown "
                f"(official widths: {known})",
                "pass num_heads=... to load_encoder",
            )
        num_heads = size_heads
    overrides: dict[str, Any] = {}
    if dim != size_dim:
        overrides["embed_dim"] = dim
    if depth != size_depth:
        overrides["depth"] = depth
    if num_heads != size_heads:
        overrides["num_heads"] = num_heads
    if int(dim * size_ratio) != hidden:
        overrides["mlp_ratio"] = _mlp_ratio(dim, hidden)
    try:
        return VisionTransformerEncoder.Config(
            size=size, patch_size=patch, img_size=side * patch, in_chans=in_chans, **overrides
        )
    except ValidationError as exc:
        raise JepaflowError(f"{source}: the inferred ViT is not valid: {_first_error(exc)}") from None


# ----------------------------------------------------------------------------------------------------------------
# Reading files
# ----------------------------------------------------------------------------------------------------------------


def _resolve_path(path: str | os.PathLike) -> Path:
    text = os.fspath(path)
    if "\0" not in text and os.path.isdir(text):
        last = Path(text) / "checkpoints" / "last.pt"
        if not last.is_file():
            raise CheckpointError(
                f"{clip(text, 300)} is a folder without checkpoints/last.pt",
                "pass a jepaflow run folder that has been checkpointed, or the checkpoint file itself",
            )
        return last
    return check_readable_file(text, "checkpoint")


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    return f"{where}: {err['msg']}" if where else err["msg"]


# ----------------------------------------------------------------------------------------------------------------
# Official I-JEPA checkpoints
# ----------------------------------------------------------------------------------------------------------------


def _is_official(ckpt: dict) -> bool:
    wrapped = any(isinstance(ckpt.get(key), dict) for key in OFFICIAL_ROLES.values())
    return wrapped or "patch_embed.proj.weight" in strip_wrapper_prefixes(ckpt)


def _encoder_from_official(ckpt: dict, path: Path, which: str | None, num_heads: int | None) -> Encoder:
    from jepaflow.encoders.vit import VisionTransformerEncoder

    if any(isinstance(ckpt.get(key), dict) for key in OFFICIAL_ROLES.values()):
        role = "target" if which is None else which
        if role not in OFFICIAL_ROLES:
            raise JepaflowError(
                f"unknown encoder role {which!r} for the official I-JEPA checkpoint {path}",
                f"use which= one of: {', '.join(OFFICIAL_ROLES)} (target: the EMA encoder, the paper's default)",
            )
        key = OFFICIAL_ROLES[role]
        if not isinstance(ckpt.get(key), dict):
            present = [r for r, k in OFFICIAL_ROLES.items() if isinstance(ckpt.get(k), dict)]
            raise JepaflowError(
                f"{path} has no {key!r} state dict (the {role} encoder)",
                f"use which= one of: {', '.join(present)}",
            )
        state = strip_wrapper_prefixes(dict(ckpt[key]))
        what = f"{path} ({key!r})"
    else:
        if which is not None:
            raise JepaflowError(
                f"{path} is a single encoder's state dict: there is no {which!r} encoder to choose",
                "leave which unset",
            )
        state = strip_wrapper_prefixes(dict(ckpt))
        what = str(path)
    check_finite(state, what)
    config = infer_vit_config(state, num_heads=num_heads, source=what)
    return build_for_state(lambda: VisionTransformerEncoder(config), state, what)


def build_for_state(build: Callable[[], nn.Module], state: dict[str, Any], source: str) -> nn.Module:
    """``build()`` loaded with ``state``, checked against it *before* any memory is spent on weights.

    The module is first built on the ``meta`` device (no storage), and its state-dict keys and shapes are
    compared with the file's tensors: a file whose recipe or keys describe a model far larger than its tensors
    (a crafted or damaged checkpoint) is refused without allocating that model. Then it is built for real,
    with the caller's RNG left alone (construction draws init weights, overwritten at once)."""
    try:
        with torch.device("meta"), torch.random.fork_rng(devices=[]):
            shell = build()
    except JepaflowError:
        raise
    except Exception:  # a plugin that reads tensor values in its constructor cannot be built on meta
        shell = None
    if shell is not None:
        check_state_matches(shell, state, source)
    with torch.random.fork_rng(devices=[]):
        module = build()
    load_state_dict_checked(module, state, source)
    return module


def _mlp_ratio(dim: int, hidden: int) -> float:
    """A float ratio ``r`` with ``int(dim * r) == hidden`` (how the blocks size their MLP)."""
    ratio = hidden / dim
    while int(dim * ratio) < hidden:  # hidden/dim can round down by one ulp; step up until it does not
        ratio = math.nextafter(ratio, math.inf)
    return ratio


# ----------------------------------------------------------------------------------------------------------------
# jepaflow checkpoints
# ----------------------------------------------------------------------------------------------------------------


def _without_init_checkpoints(recipe: dict[str, Any]) -> dict[str, Any]:
    """The recipe with every plugin's ``checkpoint`` field (by convention: weights to *start* training from,
    e.g. the timm encoder's) set to None: the stored state dict supersedes them, and the files they name need
    not exist where the checkpoint is loaded."""
    out = dict(recipe)
    for section, body in recipe.items():
        if isinstance(body, dict) and body.get("checkpoint") is not None:
            out[section] = {**body, "checkpoint": None}
    return out


def _encoder_from_jepaflow(ckpt: dict, path: Path, which: str | None) -> Encoder:
    from jepaflow.config import load_recipe
    from jepaflow.engine.build import build_objective

    recipe_dict, state = ckpt.get("recipe"), ckpt.get("objective")
    if not isinstance(recipe_dict, dict) or not isinstance(state, dict):
        raise CheckpointError(
            f"{path} declares format {JEPAFLOW_FORMAT!r} but lacks its 'recipe' or 'objective' entry",
            "the file is damaged or was not written by jepaflow's engine",
        )
    where = f"{path} ('objective')"
    if not all(isinstance(k, str) and (isinstance(v, Tensor) or k.endswith(EXTRA_STATE_SUFFIX))
               for k, v in state.items()):
        raise CheckpointError(f"{where} is not a state dict of tensors",
                              "the file is damaged or was not written by jepaflow's engine")
    check_finite(state, where)
    try:
        recipe = load_recipe(_without_init_checkpoints(recipe_dict))
    except JepaflowError as exc:
        raise CheckpointError(
            f"the recipe stored in {path} cannot be rebuilt here: {exc.problem}",
            exc.fix or "install the plugins (and version) that trained it",
        ) from None
    objective = build_for_state(lambda: build_objective(recipe), state, where)
    if which is None:
        return objective.representation_encoder()
    roles = objective.encoders()
    if which not in roles:
        raise JepaflowError(
            f"the {type(objective).__name__} of {path} has no encoder {which!r}",
            f"use which= one of: {', '.join(roles)} (or leave it unset for the representation encoder)",
        )
    return roles[which]


__all__ = [
    "JEPAFLOW_FORMAT",
    "OFFICIAL_ROLES",
    "infer_vit_config",
    "load_encoder",
    "load_state_dict_checked",
    "strip_wrapper_prefixes",
    "with_img_size",
]
