"""What ``jepaflow probe SOURCE`` can probe, and how each source becomes an encoder.

* a jepaflow run folder (its ``checkpoints/last.pt`` and ``recipe.yaml``) or a jepaflow checkpoint file: the
  objective is rebuilt from the stored recipe and loaded; the probed encoder is ``encoders()[role]`` (default:
  ``representation_encoder()``). The run's recipe supplies the default data section and probe settings.
* an official I-JEPA checkpoint (or a bare ViT state dict): through :func:`jepaflow.load_encoder`
  (role ``target`` by default, or ``context``).
* ``timm:NAME``: the timm model at a seeded random initialization (``pretrained=False``; nothing is downloaded),
  built for the data's channels and image size: the architecture floor. ViTs go through the ``timm_vit`` encoder,
  other networks through ``timm_cnn``.
* ``pixels``: the raw-pixel floor, the normalized image flattened (:class:`PixelFeatures`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

from jepaflow.errors import CheckpointError, JepaflowError
from jepaflow.interfaces import Encoder, Objective, PluginConfig
from jepaflow.probes.evaluate import pick_encoder

PIXELS = "pixels"
TIMM_PREFIX = "timm:"


class PixelFeatures(Encoder):
    """The raw-pixel floor: an image's feature is the image itself, flattened (after the data set's
    normalization). One "token" per image, ``(B, 1, C*H*W)``, so :meth:`Encoder.pool` returns the flattened
    image; it has no patch tokens for the attentive probe (``has_tokens = False``)."""

    Config = PluginConfig
    has_tokens = False

    def __init__(self, channels: int, image_size: int):
        super().__init__()
        self.in_chans, self.patch_size, self.grid_size = channels, image_size, (1, 1)
        self.embed_dim = channels * image_size * image_size

    def forward(self, images: Tensor, keep: Tensor | None = None, keep_valid: Tensor | None = None) -> Tensor:
        return images.flatten(1)[:, None, :]  # (B, 1, C*H*W)


@dataclass
class Source:
    """A parsed SOURCE argument.

    Attributes:
        kind: ``run``, ``checkpoint`` (jepaflow), ``official`` (I-JEPA), ``timm`` or ``pixels``.
        spec: the argument as given; path: the checkpoint file (run folders: their ``last.pt``).
        run_dir: the run folder when the source is one (probe.json goes there by default).
        recipe: the resolved recipe stored with a jepaflow run or checkpoint (None otherwise).
    """

    kind: str
    spec: str
    path: Path | None = None
    run_dir: Path | None = None
    recipe: dict[str, Any] | None = None
    checkpoint: dict[str, Any] | None = None


def inspect_source(spec: str) -> Source:
    """Parse SOURCE (module docstring) and read what it stores; a missing or unreadable source is a
    :class:`JepaflowError`. Files are read by :func:`jepaflow.checkpoints.read_checkpoint` only
    (``weights_only=True``: a file asking for any Python object beyond tensors, numbers, text and containers is
    refused, never run); a jepaflow checkpoint's entries are checked here (a state dict of finite tensors and its
    recipe), before anything is built."""
    from jepaflow.checkpoints import FORMAT, read_checkpoint

    if spec == PIXELS:
        return Source(PIXELS, spec)
    if spec.startswith(TIMM_PREFIX):
        import timm

        name = spec[len(TIMM_PREFIX):]
        if not timm.is_model(name):
            raise JepaflowError(f"timm has no model named {name!r}",
                                "pick a name from timm.list_models(), e.g. timm:vit_small_patch16_224 or timm:resnet18")
        return Source("timm", spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        ckpt_path = path / "checkpoints" / "last.pt"
        if not ckpt_path.is_file():
            raise JepaflowError(f"{path} is a folder without checkpoints/last.pt",
                                "pass a jepaflow run folder that has been checkpointed, or a checkpoint file")
        ckpt = _checked_jepaflow_checkpoint(read_checkpoint(ckpt_path, "cpu"), ckpt_path)
        recipe_file = path / "recipe.yaml"
        recipe = _read_run_recipe(recipe_file) if recipe_file.is_file() else ckpt["recipe"]
        return Source("run", spec, ckpt_path, path, recipe, ckpt)
    if not path.is_file():
        raise JepaflowError(f"no probe source {spec!r}: not a file, not a folder, not 'pixels' nor 'timm:NAME'",
                            "pass a jepaflow run folder, a checkpoint file, an official I-JEPA checkpoint, "
                            "timm:NAME or pixels")
    ckpt = read_checkpoint(path, "cpu")
    if isinstance(ckpt, dict) and ckpt.get("format") == FORMAT:
        ckpt = _checked_jepaflow_checkpoint(ckpt, path)
        return Source("checkpoint", spec, path, None, ckpt["recipe"], ckpt)
    return Source("official", spec, path)  # read again, and checked, by jepaflow.load_encoder


def _checked_jepaflow_checkpoint(ckpt: Any, path: Path) -> dict[str, Any]:
    """``ckpt`` if it is a jepaflow checkpoint with a recipe and an objective state dict of finite tensors, else
    one :class:`CheckpointError` naming the file and what is wrong."""
    from jepaflow.checkpoints import EXTRA_STATE_SUFFIX, FORMAT, check_finite, describe

    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a jepaflow checkpoint (found {describe(ckpt)})",
                              "pass a run folder written by `jepaflow run`, or its checkpoints/last.pt")
    state = ckpt.get("objective")
    if not isinstance(ckpt.get("recipe"), dict) or not isinstance(state, dict):
        raise CheckpointError(f"{path} declares format {FORMAT!r} but lacks its 'recipe' or 'objective' entry",
                              "the file is damaged or was not written by jepaflow's engine")
    if not all(isinstance(k, str) and (isinstance(v, Tensor) or k.endswith(EXTRA_STATE_SUFFIX))
               for k, v in state.items()):
        raise CheckpointError(f"{path} ('objective') is not a state dict of tensors",
                              "the file is damaged or was not written by jepaflow's engine")
    check_finite(state, f"{path} ('objective')")
    return ckpt


def _read_run_recipe(path: Path) -> dict[str, Any]:
    """A run folder's ``recipe.yaml`` (the resolved recipe), or one message if it is not a readable mapping."""
    try:
        recipe = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise JepaflowError(f"cannot read {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                            "restore the run folder's recipe.yaml, or pass its checkpoints/last.pt") from None
    if not isinstance(recipe, dict):
        raise JepaflowError(f"{path} is not a recipe (a YAML mapping)",
                            "restore the run folder's recipe.yaml, or pass its checkpoints/last.pt")
    return recipe


def _without_init_checkpoints(recipe: dict[str, Any]) -> dict[str, Any]:
    """The recipe with plugins' ``checkpoint`` fields (weights to *start* from) cleared: the stored state dict
    supersedes them and their files need not exist here."""
    return {s: ({**b, "checkpoint": None} if isinstance(b, dict) and b.get("checkpoint") is not None else b)
            for s, b in recipe.items()}


def build_run_objective(recipe: dict[str, Any], state: dict[str, Tensor] | None, what: str) -> Objective:
    """The objective of a stored recipe, with ``state`` loaded (None: at its seeded initialization, exactly as
    the run started: ``torch.manual_seed(recipe seed)`` then build). With ``state``, the objective is first
    built on the ``meta`` device and compared with ``state`` (:func:`jepaflow.hub.build_for_state`), so that a
    recipe describing a far larger model than the file's tensors is refused before any memory is spent."""
    from jepaflow.config import load_recipe
    from jepaflow.engine.build import build_objective
    from jepaflow.hub import build_for_state

    try:
        r = load_recipe(_without_init_checkpoints(recipe) if state is not None else recipe)
    except JepaflowError as exc:
        raise JepaflowError(f"the recipe stored with {what} cannot be rebuilt here: {exc.problem}",
                            exc.fix or "install the plugins that trained it") from None
    if state is not None:
        return build_for_state(lambda: build_objective(r), state, f"{what} ('objective')")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(r.seed)
        return build_objective(r)


def source_encoder(src: Source, role: str | None, data_section: dict[str, Any], seed: int) -> tuple[Encoder, dict[str, Any]]:
    """The encoder to probe (frozen, eval mode, on the CPU) and the ``source`` description for probe.json."""
    channels, image_size = int(data_section.get("channels", 3)), int(data_section.get("image_size", 224))
    desc: dict[str, Any] = {"kind": src.kind, "spec": src.spec, "path": None if src.path is None else str(src.path)}
    if src.kind == PIXELS:
        _no_role(role, "pixels")
        encoder: Encoder = PixelFeatures(channels, image_size)
        desc["role"] = None
    elif src.kind == "timm":
        _no_role(role, "a timm model")
        encoder = timm_random_encoder(src.spec[len(TIMM_PREFIX):], channels, image_size, seed)
        desc.update({"role": None, "model_name": src.spec[len(TIMM_PREFIX):], "init_seed": seed})
    elif src.kind in ("run", "checkpoint"):
        objective = build_run_objective(src.recipe, src.checkpoint["objective"], str(src.path))
        encoder, desc["role"] = pick_encoder(objective, role, str(src.path))
        desc.update({"objective": src.recipe.get("objective", {}).get("name"), "step": src.checkpoint.get("step"),
                     "run_dir": None if src.run_dir is None else str(src.run_dir)})
    else:
        from jepaflow.hub import load_encoder

        # At the data's resolution: fixed sin-cos position tables are recomputed exactly for the new grid.
        encoder = load_encoder(src.path, which=role, img_size=image_size)
        desc["role"] = role or "target"
    encoder.eval()
    encoder.requires_grad_(False)
    _check_channels(encoder, channels, src.spec)
    _check_image_size(encoder, channels, image_size, src.spec)
    desc["encoder_class"] = type(encoder).__name__
    return encoder, desc


def timm_random_encoder(name: str, channels: int, image_size: int, seed: int) -> Encoder:
    """A timm model by name at a seeded random initialization, for ``channels`` x ``image_size`` images: a
    ``timm_vit`` encoder for VisionTransformer models, a ``timm_cnn`` encoder otherwise."""
    import timm
    from timm.models.vision_transformer import VisionTransformer

    with torch.device("meta"):  # which family: build on meta, which allocates nothing
        is_vit = isinstance(timm.create_model(name, pretrained=False, num_classes=0), VisionTransformer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if is_vit:
            from jepaflow.encoders.timm_vit import TimmViTEncoder

            return TimmViTEncoder(TimmViTEncoder.Config(model_name=name, img_size=image_size, in_chans=channels))
        from jepaflow.encoders.timm_cnn import TimmCNNEncoder

        return TimmCNNEncoder(TimmCNNEncoder.Config(model_name=name, img_size=image_size, in_chans=channels))


def _no_role(role: str | None, what: str) -> None:
    if role is not None:
        raise JepaflowError(f"{what} has a single encoder: there is no {role!r} role to choose",
                            "drop --encoder (probe.encoder)")


def _check_image_size(encoder: Encoder, channels: int, image_size: int, spec: str) -> None:
    """One blank image of the data's size through the encoder, so that a resolution it cannot take is one
    message here rather than a shape error in the middle of the extraction."""
    try:
        with torch.no_grad():
            encoder(torch.zeros(1, channels, image_size, image_size))
    except (RuntimeError, ValueError, AssertionError) as exc:
        grid, patch = getattr(encoder, "grid_size", None), getattr(encoder, "patch_size", None)
        trained = f" (it was built for {grid[0] * patch} px)" if grid and isinstance(patch, int) else ""
        raise JepaflowError(f"the encoder of {spec} cannot encode {image_size} px images{trained}: "
                            f"{str(exc).splitlines()[0]}",
                            "set the data's image_size to match, e.g. --set data.image_size=N") from None


def _check_channels(encoder: Encoder, channels: int, spec: str) -> None:
    in_chans = getattr(encoder, "in_chans", None)
    if in_chans is not None and in_chans != channels:
        raise JepaflowError(f"the encoder of {spec} takes {in_chans}-channel images but the data gives {channels}",
                            f"set the data's channels to match, e.g. --set data.channels={in_chans}")


__all__ = ["PIXELS", "PixelFeatures", "Source", "build_run_objective", "inspect_source", "pick_encoder",
           "source_encoder", "timm_random_encoder"]
