"""Recipes: YAML files mirrored one to one by pydantic models.

A recipe has engine sections (``optim``, ``train``, ``probe``) whose models live here, and plugin sections
(``data``, ``encoder``, ``predictor``, ``masker``, ``target_updater``, ``objective``) that hold ``name:`` plus
the fields of that plugin's own ``Config`` model. :func:`load_recipe` validates everything and reports every
problem at once, each with its YAML path, before any tensor exists.
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from jepaflow.errors import PluginError, RecipeError, clip, short
from jepaflow.registry import Registry, default_registry
from jepaflow.strict import INT64_MAX, INT64_MIN, StrictModel

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


#: upper bounds of the engine's numbers: far beyond any published recipe, far below what overflows
MAX_LR = 100.0  # SimCLR/BYOL's LARS at batch 32k use lr ~ 40
MAX_WEIGHT_DECAY = 100.0
MAX_BATCH = 1 << 20
MAX_STEPS = 1 << 40

#: an AdamW beta: a decay rate in [0, 1)
Beta = Annotated[float, Field(ge=0, lt=1)]


class _Strict(StrictModel):
    """Engine sections: strict values, no unknown fields, finite numbers (:mod:`jepaflow.strict`), every number
    with a range."""


class OptimConfig(_Strict):
    """AdamW with per-step schedules (I-JEPA, Assran et al. 2023, appendix; facebookresearch/ijepa
    ``src/helper.py:init_opt``). Epoch-valued fields are converted to steps with the loader's length."""

    name: Literal["adamw", "lars"] = Field(
        "adamw", description="adamw (I-JEPA, MAE, data2vec, LeJEPA); lars (SimCLR, BYOL, VICReg on ImageNet)"
    )
    epochs: int = Field(300, ge=1, le=1_000_000, description="training length in epochs")
    lr: float = Field(1e-3, gt=0, le=MAX_LR, description="peak learning rate, reached after warmup")
    start_lr: float = Field(2e-4, ge=0, le=MAX_LR, description="learning rate at step 0 of the linear warmup")
    final_lr: float = Field(1e-6, ge=0, le=MAX_LR, description="learning rate at the end of the cosine decay")
    warmup_epochs: float = Field(40, ge=0, le=1_000_000, description="linear warmup length in epochs")
    weight_decay: float = Field(0.04, ge=0, le=MAX_WEIGHT_DECAY, description="weight decay at step 0 (cosine schedule)")
    final_weight_decay: float = Field(0.4, ge=0, le=MAX_WEIGHT_DECAY, description="weight decay at the end of the schedule")
    ipe_scale: float = Field(
        1.0, gt=0, le=100, description="schedules span ipe_scale x the run (official code's 'ipe_scale'; 1.0 = the run)"
    )
    betas: tuple[Beta, Beta] = Field((0.9, 0.999), description="AdamW betas, each in [0, 1)")
    momentum: float = Field(0.9, ge=0, lt=1, description="LARS (SGD) momentum")
    lars_eta: float = Field(0.001, gt=0, le=1, description="LARS trust coefficient (You et al. 2017)")
    eps: float = Field(1e-8, gt=0, le=1, description="AdamW epsilon")
    grad_clip: float | None = Field(None, gt=0, le=1e6, description="clip the global grad norm to this (None: off)")
    accum_steps: int = Field(1, ge=1, le=4096, description="micro-batches accumulated per optimizer step")

    @model_validator(mode="after")
    def _warmup_fits(self) -> OptimConfig:
        if self.epochs * self.ipe_scale < 1:
            raise ValueError(f"ipe_scale ({self.ipe_scale}) x epochs ({self.epochs}) is under one epoch of schedule")
        if self.warmup_epochs > self.epochs * self.ipe_scale:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) is longer than the run ({self.epochs} epochs)")
        return self


class TrainConfig(_Strict):
    """Engine settings: batching, precision, checkpoints, logging."""

    batch_size: int = Field(2048, ge=1, le=MAX_BATCH, description="global batch per optimizer step (all ranks x accum_steps)")
    num_workers: int = Field(4, ge=0, le=512, description="DataLoader worker processes per rank")
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="auto: bf16 autocast on CUDA, fp32 on CPU (bf16 needs no GradScaler)"
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when available")
    max_steps: int | None = Field(None, ge=1, le=MAX_STEPS, description="stop after this many steps (schedules keep the full length)")
    checkpoint_every_steps: int | None = Field(None, ge=1, le=MAX_STEPS, description="also checkpoint every N steps")
    checkpoint_every_epochs: int = Field(1, ge=1, le=1_000_000, description="checkpoint at the end of every N epochs")
    keep_epoch_checkpoints: bool = Field(False, description="keep a copy per checkpointed epoch besides last.pt")
    log_every: int = Field(10, ge=1, le=MAX_STEPS, description="steps between metric lines (the only host syncs)")
    progress: bool = Field(True, description="show a rich progress bar on rank 0")
    pin_memory: bool = Field(True, description="pin host memory when training on CUDA")
    loggers: list[Literal["jsonl", "tensorboard", "wandb"]] = Field(
        ["jsonl"], description="metric sinks: jsonl (metrics.jsonl, always), tensorboard (<run>/tensorboard), wandb "
        "(offline unless WANDB_MODE is set); see jepaflow/engine/loggers.py"
    )

    @field_validator("loggers")
    @classmethod
    def _loggers_usable(cls, names: list[str]) -> list[str]:
        import importlib.util

        from pydantic_core import PydanticCustomError  # a plain message (no "Value error, " prefix)

        if "jsonl" not in names:
            raise PydanticCustomError("loggers", "must include jsonl (metrics.jsonl feeds curves.png, the summary "
                                      "and --resume)")
        if len(set(names)) != len(names):
            raise PydanticCustomError("loggers", "lists a logger twice")
        for name in names:  # the package each sink needs, checked now rather than at step 0
            if name != "jsonl" and importlib.util.find_spec(name) is None:
                raise PydanticCustomError("loggers", f"{name} is not installed: pip install {name} (or drop it "
                                          "from train.loggers)")
        return names

    monitor_every: int | None = Field(
        100, ge=1, le=MAX_STEPS, description="steps between label-free monitors (RankMe, feature std) of the representation "
        "encoder on a fixed batch, and at the last step (None: off)"
    )
    monitor_samples: int = Field(512, ge=2, le=1 << 20, description="train images in the fixed monitor batch")
    monitor_knn_every_epochs: int | None = Field(
        None, ge=1, le=1_000_000, description="epochs between kNN accuracies on labelled subsets (None: off)"
    )
    monitor_knn_samples: int = Field(2000, ge=1, le=1 << 24, description="train images (memory bank) and test images (queries) "
                                     "of the kNN monitor")
    dist_timeout_s: float = Field(
        1800, ge=1, le=7 * 24 * 3600,
        description="under torchrun: seconds a process waits for the others in a collective before it stops with "
        "a message (a dead or hung process); must exceed the longest checkpoint write",
    )
    onednn_linear: bool = Field(
        True, description="CPU fp32: linear layers (and their backward) on oneDNN's GEMM instead of MKL's (same fp32 "
        "products; no effect on CUDA or under bf16)"
    )
    compile: bool = Field(False, description="torch.compile the objective's forward and backward")
    grad_checkpointing: bool = Field(
        False, description="recompute the encoders' and predictor's block activations in backward (less memory)"
    )
    fsdp: bool = Field(
        False, description="under torchrun: shard parameters, gradients and optimizer state over the processes "
        "(torch FSDP2, fully_shard) instead of replicating them (DDP)"
    )
    fused_optimizer: bool = Field(
        True, description="AdamW's fused kernel (torch fused=True; same update, one kernel; ignored by LARS)"
    )


class ProbeConfig(_Strict):
    """Frozen-feature probes (kNN, linear) run at the end of training on the recipe's data set."""

    enabled: bool = Field(False, description="run the probe after training")
    kinds: list[Literal["knn", "linear"]] = Field(
        ["knn", "linear"], min_length=1, max_length=2, description="which probes (at least one)"
    )
    train_samples: int | None = Field(None, ge=1, le=2**40, description="cap on labelled train images (None: all)")
    test_samples: int | None = Field(None, ge=1, le=2**40, description="cap on test images (None: all)")
    knn_k: int = Field(20, ge=1, le=100_000, description="neighbours for the kNN probe (cosine similarity, vote weighted)")
    knn_temperature: float = Field(0.07, ge=1e-3, le=100, description="kNN vote temperature (Wu et al. 2018)")
    linear_epochs: int = Field(100, ge=1, le=1_000_000, description="full-batch AdamW steps of the linear probe (standardized features, zero init)")
    linear_lr: float = Field(1e-2, gt=0, le=MAX_LR, description="linear probe learning rate")
    linear_weight_decay: float = Field(1e-4, ge=0, le=MAX_WEIGHT_DECAY, description="linear probe weight decay")
    batch_size: int = Field(256, ge=1, le=MAX_BATCH, description="feature extraction batch size")
    random_init_baseline: bool = Field(
        False, description="also probe the same encoder at its random initialization (the floor SSL must beat)"
    )

    @field_validator("kinds")
    @classmethod
    def _distinct(cls, kinds: list[str]) -> list[str]:
        if len(set(kinds)) != len(kinds):
            raise ValueError(f"lists a probe twice ({kinds})")
        return kinds


class RecipeModel(_Strict):
    """The whole recipe as written: plugin sections are kept as dicts here and validated against their
    plugin's own model by :func:`load_recipe`."""

    seed: int = Field(0, ge=INT64_MIN, le=INT64_MAX, description="seed of everything: init, data order, crops, masks")
    output_dir: str = Field(
        "runs/run", min_length=1, description="run folder: checkpoints, metrics, plots, resolved recipe"
    )
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

    @field_validator("output_dir")
    @classmethod
    def _a_folder_name(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("is empty: name the run folder (an empty one would write into the current folder)")
        if "\0" in value:
            raise ValueError("contains a NUL byte")
        return value


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
    """Parse recipe YAML (or a ``--set`` value): safe, plain data only, with YAML 1.2 scientific-notation floats;
    a :class:`RecipeError` for anything :func:`parse_yaml` refuses."""
    value, issues = parse_yaml(text)
    if issues:
        raise RecipeError(issues)
    return value


#: a recipe is a few kilobytes of text; anything far larger is not one
MAX_RECIPE_BYTES = 1 << 20
#: deepest nesting of a recipe (section.field.list is 3 levels; plugin kwargs add a few)
MAX_DEPTH = 32
#: most values a recipe may hold once YAML aliases are expanded (an alias bomb expands to billions)
MAX_VALUES = 100_000
#: longest integer literal (int64 has 19 digits; Python refuses to parse more than 4300)
MAX_INT_CHARS = 40

_CORE = "tag:yaml.org,2002:"
#: the YAML tags of plain data; every other tag (!!binary, !!timestamp, !!set, !!python/..., !custom) is refused
_PLAIN_TAGS = {_CORE + t for t in ("null", "bool", "int", "float", "str", "seq", "map", "merge")}
_TAG_NAMES = {_CORE + "seq": "a list", _CORE + "map": "a mapping"}


def path_part(key: object) -> str:
    """A key as shown in a YAML path: as written when it is a plain name, quoted (escapes visible) otherwise, and
    never longer than about 60 characters."""
    if isinstance(key, str) and key and key.isprintable() and key.strip() == key and "." not in key:
        return clip(key, 60)
    return short(key, 60)


def _shown(text: str) -> str:
    """An override as shown in a message: as typed when printable, quoted (escapes visible) otherwise."""
    if text and text.isprintable() and text.strip() == text:
        return clip(text, 60)
    return short(text, 60)


def _node_path(parent: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{parent}[{key}]"
    return f"{parent}.{path_part(key)}" if parent else path_part(key)


def _check_nodes(root: yaml.Node) -> list[tuple[str, str]]:
    """Problems of a composed YAML document that must be caught before it is turned into Python values:
    duplicate keys, tags that are not plain data, keys that are not names, integer literals too long to parse,
    nesting deeper than :data:`MAX_DEPTH`, more than :data:`MAX_VALUES` values once aliases are expanded, and
    aliases that refer to themselves. Iterative, and each node (shared through an alias or not) is visited once."""
    issues: list[tuple[str, str]] = []
    sizes: dict[int, int] = {}  # id(node) -> values under it, aliases expanded
    heights: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, str, bool]] = [(root, "", False)]
    while stack:
        node, path, done = stack.pop()
        nid = id(node)
        where = path or "<root>"
        if done:
            children = _children(node)
            sizes[nid] = 1 + sum(sizes.get(id(c), 0) for c, _ in children)
            heights[nid] = 1 + max((heights.get(id(c), 0) for c, _ in children), default=0)
            open_nodes.discard(nid)
            if heights[nid] > MAX_DEPTH:
                return [(where, f"is nested more than {MAX_DEPTH} levels deep; a recipe is a few levels of "
                                "sections and fields")]
            if sizes[nid] > MAX_VALUES:
                return [(where, f"expands to more than {MAX_VALUES:,} values (YAML aliases repeated inside "
                                "aliases?); write the values out, a recipe is small")]
            continue
        if nid in open_nodes:
            return [(where, "is an alias of a mapping or list that contains it (a loop)")]
        if nid in sizes:
            continue  # a shared node (alias), already checked
        if node.tag not in _PLAIN_TAGS:
            issues.append((where, f"YAML tag {short(node.tag.replace(_CORE, '!!'), 60)} is not allowed: a recipe holds plain values "
                                  "(numbers, text, true/false, null, lists, mappings)"))
            sizes[nid], heights[nid] = 1, 1
            continue
        if node.tag == _CORE + "int" and len(node.value) > MAX_INT_CHARS:
            issues.append((where, f"an integer of {len(node.value)} characters is too large (integers must fit in "
                                  "64 bits)"))
            sizes[nid], heights[nid] = 1, 1
            continue
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key, _ in node.value:
                if key.tag == _CORE + "merge":
                    continue
                if not isinstance(key, yaml.ScalarNode):
                    issues.append((where, f"has {_TAG_NAMES.get(key.tag, 'a value')} as a key; keys are names"))
                    continue
                line = key.start_mark.line + 1
                if key.value in seen:
                    issues.append((_node_path(path, key.value),
                                   f"is given twice (lines {seen[key.value]} and {line}); YAML would silently keep "
                                   "the last one: delete one of them"))
                seen.setdefault(key.value, line)
        open_nodes.add(nid)
        stack.append((node, path, True))
        for child, key in reversed(_children(node)):
            stack.append((child, _node_path(path, key), False))
    return issues


def _children(node: yaml.Node) -> list[tuple[yaml.Node, str | int]]:
    if isinstance(node, yaml.SequenceNode):
        return [(c, i) for i, c in enumerate(node.value)]
    if isinstance(node, yaml.MappingNode):
        return [(v, k.value if isinstance(k, yaml.ScalarNode) else "?") for k, v in node.value]
    return []


def parse_yaml(text: str, where: str = "") -> tuple[Any, list[tuple[str, str]]]:
    """``(value, issues)`` of a YAML text (safe: plain data only). ``where`` prefixes the paths of the issues
    (an override's ``optim.lr``). Never raises for any input text."""
    loader = None
    try:
        loader = _RecipeLoader(text)
        node = loader.get_single_node()
        if node is None:
            return None, []
        issues = _check_nodes(node)
        if issues:
            return None, [(_node_path(where, p) if where and p != "<root>" else (where or p), m) for p, m in issues]
        return loader.construct_document(node), []
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            at = f"line {mark.line + 1}, column {mark.column + 1}"
        elif getattr(exc, "position", None) is not None:  # a ReaderError: a character YAML does not allow
            at = f"character {exc.position + 1}"  # 0-based
        else:
            at = "?"
        problem = getattr(exc, "problem", None) or str(exc)
        if isinstance(exc, yaml.reader.ReaderError):
            problem = f"the character U+{exc.character:04X} is not allowed in YAML text"
        return None, [(where or f"<yaml {at}>", f"not valid YAML{' at ' + at if where else ''}: "
                                               f"{clip(str(problem), 200)}")]
    except RecursionError:
        return None, [(where or "<root>", f"is nested more than {MAX_DEPTH} levels deep; a recipe is a few levels "
                                          "of sections and fields")]
    except ValueError as exc:  # e.g. a value Python cannot convert; the node checks should have caught it
        return None, [(where or "<root>", f"a value cannot be read: {clip(str(exc), 200)}")]
    finally:
        if loader is not None:
            loader.dispose()


def check_tree(value: Any, where: str = "") -> list[tuple[str, str]]:
    """Problems of an already-parsed recipe tree (a dict passed by a program, or one stored in a checkpoint):
    keys that are not text, nesting deeper than :data:`MAX_DEPTH`, more than :data:`MAX_VALUES` values, and
    containers that contain themselves. Shared sub-trees are counted as often as they occur, visited once."""
    sizes: dict[int, int] = {}
    heights: dict[int, int] = {}
    open_ids: set[int] = set()
    stack: list[tuple[Any, str, bool]] = [(value, where, False)]
    while stack:
        node, path, done = stack.pop()
        if not isinstance(node, (dict, list, tuple)):
            continue
        nid, label = id(node), path or "<root>"
        items = list(node.items()) if isinstance(node, dict) else list(enumerate(node))
        if done:
            sizes[nid] = 1 + sum(sizes.get(id(v), 1) for _, v in items)
            heights[nid] = 1 + max((heights.get(id(v), 0) for _, v in items), default=0)
            open_ids.discard(nid)
            if heights[nid] > MAX_DEPTH:
                return [(label, f"is nested more than {MAX_DEPTH} levels deep")]
            if sizes[nid] > MAX_VALUES:
                return [(label, f"holds more than {MAX_VALUES:,} values; a recipe is small")]
            continue
        if nid in open_ids:
            return [(label, "contains itself")]
        if nid in sizes:
            continue
        if isinstance(node, dict):
            bad = [k for k in node if not isinstance(k, str)]
            if bad:
                return [(label, f"has the key {short(bad[0], 40)}; keys are names (text)")]
        open_ids.add(nid)
        stack.append((node, path, True))
        for key, child in reversed(items):
            stack.append((child, _node_path(path, key), False))
    return []


# ------------------------------------------------------------------------------------------------ overrides
def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``--set a.b.c=value`` overrides (``value`` parsed as YAML) to a copy of ``raw``."""
    out = copy.deepcopy(raw)
    issues: list[tuple[str, str]] = []
    for item in overrides:
        if "=" not in item:
            issues.append((_shown(item), f"an override is PATH=VALUE, e.g. optim.lr=0.001 (got {short(item)})"))
            continue
        path, _, value_text = item.partition("=")
        keys = [k for k in path.strip().split(".") if k]
        if not keys:
            issues.append((_shown(item), "empty path"))
            continue
        if len(keys) > MAX_DEPTH:
            issues.append((_shown(path), f"is more than {MAX_DEPTH} levels deep"))
            continue
        value, problems = parse_yaml(value_text, ".".join(path_part(k) for k in keys))
        if problems:
            issues.extend(problems)
            continue
        node = out
        for i, key in enumerate(keys[:-1]):
            nxt = node.get(key)
            if nxt is None:
                nxt = node[key] = {}
            if not isinstance(nxt, dict):
                issues.append((".".join(path_part(k) for k in keys[: i + 1]),
                               "is not a section, cannot set a field under it"))
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
        parts.append(f"[{p}]" if isinstance(p, int) else path_part(p))
    return ".".join(parts).replace(".[", "[")


def _pydantic_issues(exc: ValidationError, prefix: str = "") -> list[tuple[str, str]]:
    out = []
    for err in exc.errors(include_url=False, include_context=True, include_input=True)[: RecipeError.MAX_LISTED + 1]:
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        elif err["type"] == "literal_error" and "expected" in err.get("ctx", {}):
            msg = f"must be one of {clip(str(err['ctx']['expected']), 300)}"
        elif err["type"] == "finite_number":
            msg = "must be a finite number (not .inf or .nan)"
        elif err["type"] == "value_error" and msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        msg = clip(msg, 300)
        if (err["type"] not in ("missing", "extra_forbidden") and "input" in err and not isinstance(err["input"], dict)
                and "got " not in msg):
            msg += f" (got {short(err['input'])})"
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
    """The recipe file as a dict. Refuses, with one message each: a missing path, a folder, a FIFO or device
    (reading it would block), an unreadable or oversized file, text that is not UTF-8, invalid YAML, duplicate
    keys, tags, alias bombs, deep nesting, and a document that is not a mapping."""
    text, source = _read_text(path)
    raw, issues = parse_yaml(text)
    if issues:
        raise RecipeError(issues, source=source)
    if not isinstance(raw, dict):
        raise RecipeError([("<root>", "a recipe is a YAML mapping (section: {...})")], source=source)
    return raw


def _read_text(path: str | Path) -> tuple[str, str]:
    source = clip(os.fspath(path), 300)

    def fail(msg: str) -> RecipeError:
        return RecipeError([("<file>", msg)], source=source)

    if "\0" in os.fspath(path):
        raise fail("the path contains a NUL byte")
    if len(os.fsencode(os.fspath(path))) >= 4096 or any(len(os.fsencode(p)) > 255 for p in Path(path).parts):
        raise fail("the path is too long for the file system (255 bytes per name, 4096 in all)")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise fail(f"no recipe at {source!r}") from None
    except OSError as exc:
        raise fail(f"cannot open {source!r}: {exc.strerror or exc}") from None
    import stat

    if stat.S_ISDIR(st.st_mode):
        raise fail(f"{source!r} is a folder; pass the recipe file (e.g. recipes/quickstart.yaml)")
    if not stat.S_ISREG(st.st_mode):
        raise fail(f"{source!r} is not a regular file (a pipe or device?); pass a recipe file")
    if st.st_size > MAX_RECIPE_BYTES:
        raise fail(f"{source!r} has {st.st_size:,} bytes; a recipe is a small text file (at most "
                   f"{MAX_RECIPE_BYTES:,} bytes)")
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise fail(f"cannot read {source!r}: {exc.strerror or exc}") from None
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise fail("the file is UTF-16 text; save the recipe as UTF-8")
    try:
        return data.decode("utf-8-sig"), source
    except UnicodeDecodeError as exc:
        raise fail(f"the file is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}): is it a "
                   "recipe? Save it as UTF-8") from None


def load_recipe(
    path_or_dict: str | Path | dict[str, Any],
    overrides: list[str] | None = None,
    registry: Registry | None = None,
) -> Recipe:
    """Read, override and validate a recipe; raise one :class:`RecipeError` listing every problem."""
    registry = registry or default_registry()
    if isinstance(path_or_dict, dict):
        tree_issues = check_tree(path_or_dict)
        if tree_issues:
            raise RecipeError(tree_issues)
        raw, source = copy.deepcopy(path_or_dict), None
    else:
        raw, source = read_yaml(path_or_dict), clip(os.fspath(path_or_dict), 300)
    raw = apply_overrides(raw, overrides or [])
    tree_issues = check_tree(raw)
    if tree_issues:
        raise RecipeError(tree_issues, source=source)

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
        except Exception as exc:  # a plugin's own validator failing in another way: name the plugin
            issues.append((section, f"the {kind} plugin {name!r} could not check its settings "
                                    f"({type(exc).__name__}: {clip(str(exc), 200)})"))
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
