"""Recipes: YAML files mirrored one to one by pydantic models.

A recipe has engine sections (``optim``, ``train``, ``probe``) whose models live here, and plugin sections
(``data``, ``encoder``, ``predictor``, ``masker``, ``target_updater``, ``objective``) that hold ``name:`` plus
the fields of that plugin's own ``Config`` model. :func:`load_recipe` validates everything and reports every
problem at once, each with its YAML path, before any tensor exists.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from jepaflow.errors import PluginError, RecipeError
from jepaflow.registry import Registry, default_registry
from jepaflow.strict import StrictModel

#: recipe section -> plugin kind
PLUGIN_SECTIONS: dict[str, str] = {
    "data": "dataset",
    "encoder": "encoder",
    "predictor": "predictor",
    "masker": "masker",
    "views": "view",
    "projector": "head",
    "prediction_head": "head",
    "target_updater": "target_updater",
    "objective": "objective",
}


class _Strict(StrictModel):
    """Engine sections: strict values, no unknown fields (:mod:`jepaflow.strict`)."""


class OptimConfig(_Strict):
    """AdamW with per-step schedules (I-JEPA, Assran et al. 2023, appendix; facebookresearch/ijepa
    ``src/helper.py:init_opt``). Epoch-valued fields are converted to steps with the loader's length."""

    name: Literal["adamw", "lars"] = Field(
        "adamw", description="adamw (I-JEPA, MAE, data2vec, LeJEPA); lars (SimCLR, BYOL, VICReg on ImageNet)"
    )
    epochs: int = Field(300, ge=1, description="training length in epochs")
    lr: float = Field(1e-3, gt=0, description="peak learning rate, reached after warmup")
    start_lr: float = Field(2e-4, ge=0, description="learning rate at step 0 of the linear warmup")
    final_lr: float = Field(1e-6, ge=0, description="learning rate at the end of the cosine decay")
    warmup_epochs: float = Field(40, ge=0, description="linear warmup length in epochs")
    weight_decay: float = Field(0.04, ge=0, description="weight decay at step 0 (cosine schedule)")
    final_weight_decay: float = Field(0.4, ge=0, description="weight decay at the end of the schedule")
    ipe_scale: float = Field(
        1.0, gt=0, description="schedules span ipe_scale x the run (official code's 'ipe_scale'; 1.0 = the run)"
    )
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas")
    momentum: float = Field(0.9, ge=0, lt=1, description="LARS (SGD) momentum")
    lars_eta: float = Field(0.001, gt=0, description="LARS trust coefficient (You et al. 2017)")
    eps: float = Field(1e-8, gt=0, description="AdamW epsilon")
    grad_clip: float | None = Field(None, gt=0, description="clip the global grad norm to this (None: off)")
    accum_steps: int = Field(1, ge=1, description="micro-batches accumulated per optimizer step")

    @model_validator(mode="after")
    def _warmup_fits(self) -> OptimConfig:
        if self.warmup_epochs > self.epochs * self.ipe_scale:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) is longer than the run ({self.epochs} epochs)")
        return self


class TrainConfig(_Strict):
    """Engine settings: batching, precision, checkpoints, logging."""

    batch_size: int = Field(2048, ge=1, description="global batch per optimizer step (all ranks x accum_steps)")
    num_workers: int = Field(4, ge=0, description="DataLoader worker processes per rank")
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="auto: bf16 autocast on CUDA, fp32 on CPU (bf16 needs no GradScaler)"
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when available")
    max_steps: int | None = Field(None, ge=1, description="stop after this many steps (schedules keep the full length)")
    checkpoint_every_steps: int | None = Field(None, ge=1, description="also checkpoint every N steps")
    checkpoint_every_epochs: int = Field(1, ge=1, description="checkpoint at the end of every N epochs")
    keep_epoch_checkpoints: bool = Field(False, description="keep a copy per checkpointed epoch besides last.pt")
    log_every: int = Field(10, ge=1, description="steps between metric lines (the only host syncs)")
    progress: bool = Field(True, description="show a rich progress bar on rank 0")
    pin_memory: bool = Field(True, description="pin host memory when training on CUDA")
    monitor_every: int | None = Field(
        100, ge=1, description="steps between label-free monitors (RankMe, feature std) of the representation "
        "encoder on a fixed batch, and at the last step (None: off)"
    )
    monitor_samples: int = Field(512, ge=2, description="train images in the fixed monitor batch")
    monitor_knn_every_epochs: int | None = Field(
        None, ge=1, description="epochs between kNN accuracies on labelled subsets (None: off)"
    )
    monitor_knn_samples: int = Field(2000, ge=1, description="train images (memory bank) and test images (queries) "
                                     "of the kNN monitor")


#: probe fields of earlier versions, accepted and ignored (with a warning) so that stored recipes and checkpoints
#: still load: the linear probe now solves its problem to convergence instead of running a fixed AdamW budget.
LEGACY_PROBE_FIELDS = ("linear_epochs", "linear_lr", "linear_weight_decay")


class ProbeConfig(_Strict):
    """Frozen-feature probes: run at the end of training (``enabled``) and by ``jepaflow probe``, with the same
    code and the same numbers. Every protocol is stated in docs/probes.md."""

    enabled: bool = Field(False, description="run the probes after training")
    kinds: tuple[Literal["knn", "linear", "attentive", "lowshot"], ...] = Field(
        ("knn", "linear"), min_length=1, description="which probes to run, in this order"
    )
    encoder: str | None = Field(
        None, description="encoder role to probe (a key of the objective's encoders(), e.g. target or context); "
        "None: the objective's representation encoder"
    )
    layers: Literal["last", "last4"] = Field(
        "last", description="last: pooled last-layer tokens after the final norm; last4: the pooled outputs of "
        "the last 4 blocks, concatenated (linear, kNN and low-shot; attentive always reads the last layer)"
    )
    train_samples: int | None = Field(None, ge=1, description="cap on labelled train images (None: all)")
    test_samples: int | None = Field(None, ge=1, description="cap on test images (None: all)")
    val_fraction: float = Field(
        0.1, gt=0, lt=1, description="fraction of the train split held out (stratified) to choose hyper-parameters"
    )
    seed: int = Field(0, ge=0, description="seed of the validation split, the low-shot draws and the attentive heads")
    batch_size: int = Field(256, ge=1, description="feature extraction batch size")
    knn_k: int = Field(20, ge=1, description="neighbours for the kNN probe (cosine similarity, vote weighted)")
    knn_temperature: float = Field(0.07, gt=0, description="kNN vote temperature (Wu et al. 2018)")
    linear_C: tuple[float, ...] = Field(
        (0.001, 0.01, 0.1, 1.0, 10.0, 100.0), min_length=1,
        description="grid of inverse L2 strengths C (scikit-learn's meaning) for the logistic regression",
    )
    linear_max_iter: int = Field(1000, ge=1, description="L-BFGS iterations at most per fit")
    linear_tol: float = Field(1e-4, gt=0, description="L-BFGS stops when max |gradient| of the mean loss is below this")
    attentive_lr: tuple[float, ...] = Field((1e-3, 3e-4), min_length=1, description="grid of AdamW peak learning rates")
    attentive_weight_decay: tuple[float, ...] = Field((1e-3,), min_length=1, description="grid of AdamW weight decays")
    attentive_epochs: int = Field(20, ge=1, description="epochs of each attentive head's training")
    attentive_batch_size: int = Field(256, ge=1, description="attentive head training batch size")
    attentive_heads: int | None = Field(
        None, ge=1, description="attention heads of the attentive head (None: the encoder's num_heads)"
    )
    lowshot_per_class: tuple[int, ...] = Field((1, 5, 10), description="low-shot settings: labelled images per class")
    lowshot_fractions: tuple[float, ...] = Field((0.01, 0.1), description="low-shot settings: fractions of the labels")
    lowshot_draws: int = Field(3, ge=3, description="label draws per low-shot setting (mean and std reported)")
    random_init_baseline: bool = Field(
        False, description="also probe the same encoder at its random initialization (the floor SSL must beat)"
    )

    @model_validator(mode="before")
    @classmethod
    def _drop_legacy_fields(cls, data: Any) -> Any:
        if isinstance(data, dict) and any(k in data for k in LEGACY_PROBE_FIELDS):
            import warnings

            found = [k for k in LEGACY_PROBE_FIELDS if k in data]
            warnings.warn(
                f"probe.{', probe.'.join(found)} no longer exist and are ignored: the linear probe is solved to "
                "convergence (L-BFGS) with C chosen from probe.linear_C on a validation split (docs/probes.md)",
                FutureWarning, stacklevel=2,
            )
            data = {k: v for k, v in data.items() if k not in LEGACY_PROBE_FIELDS}
        return data

    @model_validator(mode="after")
    def _check_grids(self) -> ProbeConfig:
        problems = []
        for name in ("linear_C", "attentive_lr"):
            if any(not v > 0 for v in getattr(self, name)):
                problems.append(f"{name} values must be > 0")
        if any(not v >= 0 for v in self.attentive_weight_decay):
            problems.append("attentive_weight_decay values must be >= 0")
        if any(k < 1 for k in self.lowshot_per_class):
            problems.append("lowshot_per_class values must be >= 1")
        if any(not 0 < f <= 1 for f in self.lowshot_fractions):
            problems.append("lowshot_fractions values must be in (0, 1]")
        if "lowshot" in self.kinds and not (self.lowshot_per_class or self.lowshot_fractions):
            problems.append("lowshot needs at least one setting in lowshot_per_class or lowshot_fractions")
        if len(set(self.kinds)) != len(self.kinds):
            problems.append("kinds lists a probe twice")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class RecipeModel(_Strict):
    """The whole recipe as written: plugin sections are kept as dicts here and validated against their
    plugin's own model by :func:`load_recipe`."""

    seed: int = Field(0, description="seed of everything: init, data order, crops, masks")
    output_dir: str = Field("runs/run", description="run folder: checkpoints, metrics, plots, resolved recipe")
    data: dict[str, Any]
    encoder: dict[str, Any] | None = None
    predictor: dict[str, Any] | None = None
    masker: dict[str, Any] | None = None
    views: dict[str, Any] | None = None
    projector: dict[str, Any] | None = None
    prediction_head: dict[str, Any] | None = None
    target_updater: dict[str, Any] | None = None
    objective: dict[str, Any]
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    probe: ProbeConfig = ProbeConfig()


@dataclass(frozen=True)
class Component:
    """A validated plugin section: which plugin, its class, and its typed config."""

    kind: str
    name: str
    cls: Any
    config: Any


@dataclass(frozen=True)
class Recipe:
    """A validated recipe: engine sections typed, plugin sections resolved to their classes and configs."""

    seed: int
    output_dir: str
    optim: OptimConfig
    train: TrainConfig
    probe: ProbeConfig
    components: dict[str, Component]  # recipe section -> component
    source: str | None = None

    def component(self, section: str) -> Component | None:
        return self.components.get(section)

    def to_dict(self) -> dict[str, Any]:
        """The resolved recipe (defaults filled in), in the YAML layout; round-trips through load_recipe."""
        out: dict[str, Any] = {"seed": self.seed, "output_dir": self.output_dir}
        for section, comp in self.components.items():
            out[section] = {"name": comp.name, **comp.config.model_dump(mode="json")}
        out["optim"] = self.optim.model_dump(mode="json")
        out["train"] = self.train.model_dump(mode="json")
        out["probe"] = self.probe.model_dump(mode="json")
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# ------------------------------------------------------------------------------------------------ YAML
class _RecipeLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 floats: ``1e-3`` is the number 0.001 (YAML 1.1, PyYAML's default, needs
    a dot, ``1.0e-3``, and reads ``1e-3`` as a string, which the strict config models would then refuse)."""


_RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_yaml_text(text: str) -> Any:
    """Parse recipe YAML (or a ``--set`` value): safe, with YAML 1.2 scientific-notation floats."""
    return yaml.load(text, Loader=_RecipeLoader)  # noqa: S506 - a SafeLoader subclass


# ------------------------------------------------------------------------------------------------ overrides
def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``--set a.b.c=value`` overrides (``value`` parsed as YAML) to a copy of ``raw``."""
    out = copy.deepcopy(raw)
    issues: list[tuple[str, str]] = []
    for item in overrides:
        if "=" not in item:
            issues.append((item, "an override is PATH=VALUE, e.g. optim.lr=0.001"))
            continue
        path, _, value_text = item.partition("=")
        keys = [k for k in path.strip().split(".") if k]
        if not keys:
            issues.append((item, "empty path"))
            continue
        try:
            value = load_yaml_text(value_text)
        except yaml.YAMLError as exc:
            issues.append((path, f"value {value_text!r} is not valid YAML ({exc.__class__.__name__})"))
            continue
        node = out
        for i, key in enumerate(keys[:-1]):
            nxt = node.get(key)
            if nxt is None:
                nxt = node[key] = {}
            if not isinstance(nxt, dict):
                issues.append((".".join(keys[: i + 1]), "is not a section, cannot set a field under it"))
                break
            node = nxt
        else:
            node[keys[-1]] = value
    if issues:
        raise RecipeError(issues, source="--set")
    return out


def _loc(prefix: str, loc: tuple[Any, ...]) -> str:
    parts = [prefix] if prefix else []
    for p in loc:
        parts.append(f"[{p}]" if isinstance(p, int) else str(p))
    return ".".join(parts).replace(".[", "[")


def _pydantic_issues(exc: ValidationError, prefix: str = "") -> list[tuple[str, str]]:
    out = []
    for err in exc.errors():
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        elif err["type"] == "literal_error" and "expected" in err.get("ctx", {}):
            msg = f"must be one of {err['ctx']['expected']}"
        if (err["type"] not in ("missing", "extra_forbidden") and "input" in err and not isinstance(err["input"], dict)
                and "got " not in msg):
            msg += f" (got {err['input']!r})"
        out.append((_loc(prefix, err["loc"]) or "<root>", msg))
    return out


def _unknown_field_hint(section: str, cls: Any, issues: list[tuple[str, str]]) -> list[tuple[str, str]]:
    allowed = ", ".join(cls.Config.model_fields)
    return [(p, f"{m}; {section} fields are: name, {allowed}") if m == "unknown field" else (p, m) for p, m in issues]


def _capability_issues(encoder: Component, objective: Component, registry: Registry) -> list[tuple[str, str]]:
    """The encoder capabilities the objective ``needs`` that the encoder class does not declare (class attributes:
    nothing is built)."""
    from jepaflow.interfaces import ENCODER_CAPABILITIES

    needs = set(getattr(objective.cls, "needs", ()))
    missing = sorted(needs - set(getattr(encoder.cls, "capabilities", ())))
    if not missing:
        return []
    able = [i.name for i in registry.infos("encoder", load=True)
            if i.loaded is not None and needs <= set(getattr(i.loaded, "capabilities", ()))]
    what = "; ".join(f"{ENCODER_CAPABILITIES.get(m, m)} [{m}]" for m in missing)
    return [("encoder.name", f"encoder {encoder.name!r} cannot {what}, which objective {objective.name!r} needs; "
                             f"encoders that can: {', '.join(able) or 'none installed'} (an encoder declares what it "
                             f"can in its class attribute `capabilities`)")]


# ------------------------------------------------------------------------------------------------ loading
def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise RecipeError([("<file>", f"no recipe at {str(p)!r}")], source=str(p))
    try:
        raw = load_yaml_text(p.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "?"
        problem = getattr(exc, "problem", None) or str(exc)
        raise RecipeError([(f"<yaml {where}>", f"not valid YAML: {problem}")], source=str(p)) from None
    if not isinstance(raw, dict):
        raise RecipeError([("<root>", "a recipe is a YAML mapping (section: {...})")], source=str(p))
    return raw


def load_recipe(
    path_or_dict: str | Path | dict[str, Any],
    overrides: list[str] | None = None,
    registry: Registry | None = None,
) -> Recipe:
    """Read, override and validate a recipe; raise one :class:`RecipeError` listing every problem."""
    registry = registry or default_registry()
    if isinstance(path_or_dict, dict):
        raw, source = copy.deepcopy(path_or_dict), None
    else:
        raw, source = read_yaml(path_or_dict), str(path_or_dict)
    raw = apply_overrides(raw, overrides or [])

    issues: list[tuple[str, str]] = []
    # Engine sections first (plugin sections only need to be mappings here).
    try:
        model = RecipeModel.model_validate(raw)
    except ValidationError as exc:
        issues.extend(_pydantic_issues(exc))
        model = None

    components: dict[str, Component] = {}
    plugin_fixes: list[str] = []  # the fixes of plugin lookups that failed, each said once
    plugin_paths: set[str] = set()
    for section, kind in PLUGIN_SECTIONS.items():
        body = raw.get(section)
        if body is None:
            continue
        if not isinstance(body, dict):
            continue  # already reported by RecipeModel
        name = body.get("name")
        if not isinstance(name, str):
            known = ", ".join(registry.names(kind)) or "none installed"
            issues.append((f"{section}.name", f"missing: name the {kind} plugin to use ({known})"))
            continue
        try:
            cls = registry.get(kind, name)
        except PluginError as exc:  # unknown, failed to import, or claimed twice: its own fix, said once
            issues.append((f"{section}.name", exc.problem))
            plugin_paths.add(f"{section}.name")
            if exc.fix and exc.fix not in plugin_fixes:
                plugin_fixes.append(exc.fix)
            continue
        fields = {k: v for k, v in body.items() if k != "name"}
        try:
            cfg = cls.Config.model_validate(fields)
        except ValidationError as exc:
            issues.extend(_unknown_field_hint(section, cls, _pydantic_issues(exc, prefix=section)))
            continue
        components[section] = Component(kind=kind, name=name, cls=cls, config=cfg)

    objective = components.get("objective")
    if objective is not None:
        for needed in sorted(objective.cls.requires):
            if needed not in PLUGIN_SECTIONS:
                issues.append(("objective.name", f"plugin {objective.name!r} requires unknown section {needed!r}"))
            elif raw.get(needed) is None:
                kind = PLUGIN_SECTIONS[needed]
                known = ", ".join(registry.names(kind)) or "none installed"
                issues.append((needed, f"missing: objective {objective.name!r} needs a {kind} ({known})"))

    encoder = components.get("encoder")
    if objective is not None and encoder is not None:
        issues.extend(_capability_issues(encoder, objective, registry))

    # Cross-section agreement, by field-name convention (no plugin is named here).
    enc, data = components.get("encoder"), components.get("data")
    if enc is not None and data is not None:
        for enc_field, data_field in (("img_size", "image_size"), ("in_chans", "channels")):
            a, b = getattr(enc.config, enc_field, None), getattr(data.config, data_field, None)
            if a is not None and b is not None and a != b:
                issues.append((f"encoder.{enc_field}", f"is {a} but data.{data_field} is {b}; they must agree"))

    if model is not None and model.train.batch_size % model.optim.accum_steps != 0:
        issues.append(("train.batch_size", f"must be a multiple of optim.accum_steps ({model.optim.accum_steps})"))

    if issues or model is None:
        fix = None
        if plugin_fixes:
            plain = any(path not in plugin_paths for path, _ in issues)
            fix = "; ".join(plugin_fixes + (["edit the recipe (or the --set override) at the other paths"]
                                            if plain else []))
        raise RecipeError(issues, source=source, fix=fix)
    return Recipe(
        seed=model.seed,
        output_dir=model.output_dir,
        optim=model.optim,
        train=model.train,
        probe=model.probe,
        components=components,
        source=source,
    )
