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
import pickle
import pickletools
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch import Tensor, nn
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from jepaflow.errors import JepaflowError
from jepaflow.interfaces import Encoder

#: ``format`` value of the checkpoints written by jepaflow's engine.
JEPAFLOW_FORMAT = "jepaflow-checkpoint"

#: role -> key of that encoder's state dict in an official I-JEPA checkpoint.
OFFICIAL_ROLES: dict[str, str] = {"target": "target_encoder", "context": "encoder"}

#: prefixes added by wrappers (DistributedDataParallel, torch.compile) that are not part of the model.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")

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
        JepaflowError: the file is missing, unreadable, not a checkpoint, or does not match what is expected;
            the message names the file and the fix.
    """
    file = _resolve_path(Path(path))
    ckpt = _read_checkpoint(file, map_location)
    if isinstance(ckpt, dict) and ckpt.get("format") == JEPAFLOW_FORMAT:
        encoder = _encoder_from_jepaflow(ckpt, file, which)
    elif isinstance(ckpt, dict) and _is_official(ckpt):
        encoder = _encoder_from_official(ckpt, file, which, num_heads)
    else:
        raise JepaflowError(
            f"{file} is a PyTorch file but not an encoder checkpoint: expected an official I-JEPA checkpoint "
            f"(keys 'encoder'/'target_encoder'), a ViT state dict (key 'patch_embed.proj.weight') or a jepaflow "
            f"checkpoint (format {JEPAFLOW_FORMAT!r}); found {_describe(ckpt)}",
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


def _resolve_path(path: Path) -> Path:
    if path.is_dir():
        last = path / "checkpoints" / "last.pt"
        if not last.is_file():
            raise JepaflowError(
                f"{path} is a folder without checkpoints/last.pt",
                "pass a jepaflow run folder that has been checkpointed, or the checkpoint file itself",
            )
        return last
    if not path.is_file():
        raise JepaflowError(f"no checkpoint at {path}", "check the path (a checkpoint file or a jepaflow run folder)")
    return path


def _read_checkpoint(path: Path, map_location: Any) -> Any:
    """``torch.load`` with the restricted (``weights_only``) unpickler first: official checkpoints hold only
    tensors, numbers, strings and containers (optimizer and scaler state included), so nothing in them needs
    arbitrary code to load."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # The restricted unpickler refused an object. jepaflow's own checkpoints may legitimately carry such
        # objects (e.g. numpy RNG state saved for exact resumption), so a file that declares jepaflow's format
        # -- read from the pickle's opcodes, without executing it -- is loaded in full. Any other file is
        # refused rather than unpickled, since full unpickling can run arbitrary code.
        if _declares_jepaflow_format(path):
            try:
                return torch.load(path, map_location=map_location, weights_only=False)
            except Exception as exc2:
                raise _unreadable(path, exc2) from None
        raise _unreadable(path, exc) from None
    except Exception as exc:
        raise _unreadable(path, exc) from None


def _unreadable(path: Path, exc: Exception) -> JepaflowError:
    text = str(exc)
    # torch wraps the restricted unpickler's reason in paragraphs of advice: keep only the reason.
    marker = "WeightsUnpickler error:"
    refused_global = False
    if marker in text:
        text = text.split(marker, 1)[1].strip().split("\n\n")[0].split(". Please use")[0]
        refused_global = "Unsupported global" in text
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    detail = lines[0][:200] if lines else ""
    if refused_global:
        fix = (
            "the file holds Python objects besides tensors and numbers; if you trust it, re-save only its "
            "weights, e.g. ckpt = torch.load(path, weights_only=False); "
            "torch.save({k: ckpt[k] for k in ('encoder', 'target_encoder')}, 'weights.pth'), and load that"
        )
    else:
        fix = (
            "pass a file written by torch.save: an official I-JEPA checkpoint, a jepaflow checkpoint, or a "
            "jepaflow run folder; if it is one, the file may be truncated (re-download or re-copy it)"
        )
    return JepaflowError(f"cannot read {path} as a PyTorch checkpoint ({type(exc).__name__}: {detail})", fix)


def _declares_jepaflow_format(path: Path) -> bool:
    """Whether the pickle inside a ``torch.save`` zip archive contains the string ``"jepaflow-checkpoint"``.

    Walks the opcodes with :func:`pickletools.genops`, which parses without constructing any object."""
    try:
        with zipfile.ZipFile(path) as archive:
            name = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
            if name is None:
                return False
            data = archive.read(name)
        return any(arg == JEPAFLOW_FORMAT for _, arg, _ in pickletools.genops(data))
    except Exception:
        return False


def _describe(obj: Any) -> str:
    if isinstance(obj, dict):
        keys = list(obj)[:8]
        more = ", ..." if len(obj) > 8 else ""
        return f"a dict with keys {', '.join(repr(k) for k in keys)}{more}"
    return f"a {type(obj).__name__}"


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


def strip_wrapper_prefixes(state_dict: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``state_dict`` without the ``module.`` (DistributedDataParallel) and ``_orig_mod.``
    (torch.compile) key prefixes, nested in any order, that *every* key shares.

    The renaming is torch's ``consume_prefix_in_state_dict_if_present``; the every-key condition is kept because
    that function also renames a lone key that happens to start with ``module.`` (a submodule of that name)."""
    state = dict(state_dict)
    while state:
        prefix = next((p for p in _WRAPPER_PREFIXES if all(isinstance(k, str) and k.startswith(p) for k in state)), None)
        if prefix is None:
            break
        consume_prefix_in_state_dict_if_present(state, prefix)
    return state


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
    config = infer_vit_config(state, num_heads=num_heads, source=what)
    with torch.random.fork_rng(devices=[]):  # construction draws random init weights, soon overwritten
        encoder = VisionTransformerEncoder(config)
    load_state_dict_checked(encoder, state, what)
    return encoder


def load_state_dict_checked(module: nn.Module, state: dict[str, Any], source: str) -> None:
    """``module.load_state_dict(state, strict=True)``, with a :class:`JepaflowError` that lists the missing,
    unexpected and mis-shaped entries (a few of each) instead of torch's RuntimeError."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k}: {tuple(getattr(state[k], 'shape', ()))} in the file, {tuple(v.shape)} expected"
        for k, v in expected.items()
        if k in state and getattr(state[k], "shape", None) != getattr(v, "shape", None)
    ]
    if missing or unexpected or wrong:

        def show(items: list[str]) -> str:
            return ", ".join(items[:6]) + (f", ... ({len(items)} in all)" if len(items) > 6 else "")

        parts = [
            f"{label}: {show(items)}"
            for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
            if items
        ]
        raise JepaflowError(
            f"{source} does not match a {type(module).__name__}: " + "; ".join(parts),
            "check that the file is the checkpoint you meant (an I-JEPA ViT checkpoint, or a jepaflow checkpoint "
            "written by this version); for official checkpoints of other widths pass num_heads=",
        )
    module.load_state_dict(state, strict=True)


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
        raise JepaflowError(
            f"{path} declares format {JEPAFLOW_FORMAT!r} but lacks its 'recipe' or 'objective' entry",
            "the file is damaged or was not written by jepaflow's engine",
        )
    try:
        recipe = load_recipe(_without_init_checkpoints(recipe_dict))
    except JepaflowError as exc:
        raise JepaflowError(
            f"the recipe stored in {path} cannot be rebuilt here: {exc.problem}",
            exc.fix or "install the plugins (and version) that trained it",
        ) from None
    with torch.random.fork_rng(devices=[]):  # construction draws random init weights, soon overwritten
        objective = build_objective(recipe)
    load_state_dict_checked(objective, state, f"{path} ('objective')")
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
