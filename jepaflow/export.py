"""Export a pretrained encoder for use outside jepaflow: ``jepaflow export RUN_OR_CHECKPOINT --output DIR``.

The output folder holds

* ``encoder.safetensors``: the encoder's state dict (keys as its plugin names them), so that
  ``Cls(Cls.Config(**json["encoder"]["config"])).load_state_dict(safetensors.torch.load_file(...))`` rebuilds it;
* ``encoder.json``: what the weights are -- the plugin (name, class, package, version) and its config, ``embed_dim``,
  ``patch_size``, ``grid_size``, ``in_chans``, ``img_size``, the jepaflow version, the source checkpoint and its
  SHA-256, the encoder role, the data normalization when the run recorded it, and how to load it into timm;
* for ViT encoders (the ``vit`` and ``timm_vit`` plugins), weights that load into timm's ``VisionTransformer``:
  ``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=...), **kwargs)`` with the name and
  keyword arguments written in ``encoder.json`` gives a model whose ``forward_features`` are the encoder's patch
  tokens and whose ``forward_head`` (average pool, no classifier) is the encoder's ``pool``: the usual timm
  fine-tuning code takes it from there. I-JEPA's ViT has no class token and a fixed sin-cos position table
  (Assran et al. 2023; facebookresearch/ijepa ``src/models/vision_transformer.py``); in timm it becomes
  ``class_token=False`` and a learned table initialized with the sin-cos values. Its parameter names already are
  timm's, so the same file serves both; the ``timm_vit`` plugin's weights lose their ``model.`` prefix in a
  separate ``timm.safetensors``. The final LayerNorm stays on every token (``fc_norm=False``), as I-JEPA's
  evaluations average normalized tokens.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from torch import Tensor

from jepaflow.errors import JepaflowError
from jepaflow.interfaces import Encoder

#: ``format`` of the checkpoints written by jepaflow's engine
JEPAFLOW_FORMAT = "jepaflow-checkpoint"
#: ``format`` of encoder.json
EXPORT_FORMAT = "jepaflow-encoder"
WEIGHTS_FILE = "encoder.safetensors"
INFO_FILE = "encoder.json"
TIMM_FILE = "timm.safetensors"

#: normalization of the official I-JEPA checkpoints (ImageNet statistics, facebookresearch/ijepa ``src/transforms.py``)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def export_encoder(source: str | Path, output: str | Path, which: str | None = None,
                   timm_weights: bool | None = None) -> dict[str, Any]:
    """Write ``encoder.safetensors``, ``encoder.json`` and (ViT encoders) timm weights into ``output``.

    Args:
        source: a jepaflow run folder or checkpoint, or an official I-JEPA checkpoint (as :func:`load_encoder`).
        output: folder to write into (created); files already there are never overwritten.
        which: the encoder role (``load_encoder``'s ``which``); None: the representation encoder (I-JEPA: target).
        timm_weights: True to require the timm export (an error for an encoder timm has no equivalent of), False
            to skip it, None to write it when the encoder is a ViT.
    Returns:
        The content of ``encoder.json``.
    Raises:
        JepaflowError: unreadable source, unknown role, an encoder without a timm equivalent when
            ``timm_weights=True``, or output files that already exist.
    """
    from safetensors.torch import save_file

    from jepaflow import __version__
    from jepaflow.hub import load_encoder

    source = Path(source)
    checkpoint = source / "checkpoints" / "last.pt" if source.is_dir() else source
    out = Path(output)
    encoder = load_encoder(source, which=which)
    plugin = plugin_of(encoder)
    timm_spec = timm_vit_spec(encoder) if timm_weights is not False else None
    if timm_weights and timm_spec is None:
        raise JepaflowError(
            f"the {plugin['name']!r} encoder ({plugin['class']}) has no timm VisionTransformer equivalent",
            "export without --timm (the safetensors weights and encoder.json are written for every encoder); the "
            "timm export covers the 'vit' and 'timm_vit' encoders",
        )
    files = [WEIGHTS_FILE, INFO_FILE] + ([TIMM_FILE] if timm_spec and timm_spec["separate_file"] else [])
    existing = [name for name in files if (out / name).exists()]
    if existing:
        raise JepaflowError(f"{out} already holds {', '.join(existing)}",
                            "export into an empty folder (or delete those files first)")

    normalization = _normalization(checkpoint)
    grid = tuple(int(g) for g in encoder.grid_size)
    info: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "format_version": 1,
        "jepaflow_version": __version__,
        "encoder": plugin,
        "embed_dim": int(encoder.embed_dim),
        "patch_size": int(encoder.patch_size),
        "grid_size": list(grid),
        "in_chans": int(encoder.in_chans),
        "img_size": getattr(encoder.config, "img_size", None),
        "weights": WEIGHTS_FILE,
        "source": {"checkpoint": str(checkpoint.resolve()), "sha256": sha256_of(checkpoint), "which": which},
        "normalization": normalization,
        "timm": None,
    }
    if timm_spec is not None:
        overlay: dict[str, Any] = {"input_size": [info["in_chans"], *(g * info["patch_size"] for g in grid)],
                                   "num_classes": 0}
        if normalization is not None:
            overlay |= {"mean": normalization["mean"], "std": normalization["std"]}
        info["timm"] = {
            "file": TIMM_FILE if timm_spec["separate_file"] else WEIGHTS_FILE,
            "model_name": timm_spec["model_name"],
            "kwargs": timm_spec["kwargs"],
            "pretrained_cfg_overlay": overlay,
            "usage": "timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay={**pretrained_cfg_overlay, "
                     "'file': <folder>/<file>}, **kwargs)",
        }

    out.mkdir(parents=True, exist_ok=True)
    metadata = {"format": "pt", "jepaflow": __version__, "plugin": plugin["name"]}
    _atomic(out / WEIGHTS_FILE, lambda tmp: save_file(plain_tensors(encoder.state_dict()), tmp, metadata=metadata))
    if timm_spec is not None and timm_spec["separate_file"]:
        _atomic(out / TIMM_FILE, lambda tmp: save_file(plain_tensors(timm_spec["state"]), tmp, metadata=metadata))
    _atomic(out / INFO_FILE, lambda tmp: Path(tmp).write_text(json.dumps(info, indent=2) + "\n"))
    return info


# ----------------------------------------------------------------------------------------------------------------
# What the encoder is
# ----------------------------------------------------------------------------------------------------------------


def plugin_of(encoder: Encoder) -> dict[str, Any]:
    """The registered name, class, package and version of ``encoder``'s plugin, and its config as JSON values."""
    from jepaflow.registry import default_registry

    cls = type(encoder)
    target = f"{cls.__module__}:{cls.__qualname__}"
    info = next((i for i in default_registry().infos("encoder") if i.target == target), None)
    config = getattr(encoder, "config", None)
    if config is None or not hasattr(config, "model_dump"):
        raise JepaflowError(f"the encoder {target} has no plugin config to describe it",
                            "export encoders built from a recipe or a checkpoint (load_encoder)")
    return {
        "name": info.name if info else None,
        "class": target,
        "package": info.package if info else "<not registered>",
        "version": info.version if info else "?",
        "config": config.model_dump(mode="json"),
    }


def timm_vit_spec(encoder: Encoder) -> dict[str, Any] | None:
    """How ``encoder`` becomes a timm ``VisionTransformer``: ``{"model_name", "kwargs", "state", "separate_file"}``,
    or None when it is not one of jepaflow's ViT encoders."""
    from jepaflow.encoders.timm_vit import TimmViTEncoder
    from jepaflow.encoders.vit import VisionTransformerEncoder

    # patch tokens only, the final norm on every token, average pooling, no classifier
    head = {"num_classes": 0, "global_pool": "avg", "fc_norm": False, "class_token": False}
    if isinstance(encoder, VisionTransformerEncoder):
        cfg = encoder.config
        kwargs = {
            "img_size": cfg.img_size, "patch_size": encoder.patch_size, "in_chans": encoder.in_chans,
            "embed_dim": encoder.embed_dim, "depth": encoder.depth, "num_heads": encoder.num_heads,
            "mlp_ratio": encoder.mlp_ratio, "qkv_bias": True, **head,
        }
        # timm's defaults for these blocks are the reference's (LayerNorm eps 1e-6, GELU, no layer scale)
        return {"model_name": timm_vit_name(cfg.size, encoder.patch_size), "kwargs": kwargs,
                "state": encoder.state_dict(), "separate_file": False}
    if isinstance(encoder, TimmViTEncoder):
        cfg = encoder.config
        kwargs = {"fc_norm": False, **cfg.model_kwargs, "img_size": cfg.img_size, "in_chans": cfg.in_chans,
                  "num_classes": 0, "global_pool": "avg", "class_token": False, "reg_tokens": 0}
        state = {k.removeprefix("model."): v for k, v in encoder.state_dict().items()}
        return {"model_name": cfg.model_name, "kwargs": kwargs, "state": state, "separate_file": True}
    return None


def timm_vit_name(size: str, patch_size: int) -> str:
    """A timm model name of this size (every dimension is also passed explicitly, so the name only picks timm's
    defaults and its ``pretrained_cfg``, which ``pretrained=True`` needs): ``vit_{size}_patch{p}_224`` where timm
    has it, else the size's timm patch size."""
    import timm

    for patch in (patch_size, 16, 14):
        name = f"vit_{size}_patch{patch}_224"
        if timm.is_model(name):
            return name
    return "vit_base_patch16_224"


def _normalization(checkpoint: Path) -> dict[str, list[float]] | None:
    """The data normalization the encoder was trained with: the stored recipe's ``data.mean/std`` for a jepaflow
    checkpoint, ImageNet's for an official I-JEPA checkpoint, else None. The file is memory-mapped with the
    restricted unpickler, so only the small entries read are loaded."""
    from jepaflow.checkpoints import read_checkpoint
    from jepaflow.errors import JepaflowError

    try:
        ckpt = read_checkpoint(checkpoint, "cpu", mmap=True)
    except JepaflowError:  # load_encoder has read the file already: whatever this cannot map is just not described
        return None
    if not isinstance(ckpt, dict):
        return None
    if ckpt.get("format") == JEPAFLOW_FORMAT:
        data = (ckpt.get("recipe") or {}).get("data") or {}
        if "mean" in data and "std" in data:
            return {"mean": [float(m) for m in data["mean"]], "std": [float(s) for s in data["std"]]}
        return None
    if any(isinstance(ckpt.get(key), dict) for key in ("encoder", "target_encoder")):
        return {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    return None


# ----------------------------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------------------------


def plain_tensors(state: dict[str, Any]) -> dict[str, Tensor]:
    """Contiguous, unshared CPU copies of the tensors of a state dict (what safetensors stores)."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items() if isinstance(v, Tensor)}


def sha256_of(path: Path, chunk: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _atomic(path: Path, write) -> None:
    """``write(temp name)`` then rename over ``path``: a failed export leaves no half-written file."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


__all__ = ["EXPORT_FORMAT", "export_encoder", "plugin_of", "timm_vit_name", "timm_vit_spec"]
