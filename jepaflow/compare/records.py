"""What ``jepaflow compare`` reads: run folders and standalone probe results, found under the given paths.

A **run folder** is a folder holding ``recipe.yaml`` (the resolved recipe the run was started with); compare
reads it with ``summary.json``, ``metrics.jsonl``, ``env.json`` and ``probe.json``. A folder holding a
``probe.json`` but no recipe is a **standalone probe** (``jepaflow probe pixels ...``, ``jepaflow probe
timm:NAME ...``): the raw-pixel floor and architecture floors come in this way.

Runs are **grouped** by their recipe minus what does not change the trained weights (:func:`group_key`): the
seed, the output folder, the ``probe`` section (the probe's settings are checked apart, from probe.json), the
data section's ``root`` (a location), and the ``train`` fields that only change how the run is carried out
(:data:`TRAIN_FIELDS_IGNORED`: workers, logging, checkpoint cadence, monitors, progress, timeouts). Every other
difference, ``train.batch_size``, ``train.max_steps``, ``train.precision`` and ``train.device`` included, makes
another group.

Results are **comparable** when their probe protocol (:func:`protocol`) is equal: the data section apart from
``root``, the split sizes, and the probe settings, ``layers`` included. Not part of it: which probes ran
(``kinds``: a probe that ran for some runs only leaves an empty cell in the others) and which encoder role was
probed (``encoder``: methods name their encoders differently; the role is a column, and one recipe probed in
two roles gives two rows). Floors are compared without ``layers`` (the raw-pixel source has none).

The probe.json schema (docs/probes.md) is read in one place, :func:`read_probe_json`; nothing else here knows
its layout.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from jepaflow.errors import JepaflowError

#: probe.json documents compare understands: (schema, versions)
PROBE_SCHEMA = "jepaflow-probe"
PROBE_VERSIONS = (1,)

#: top-level recipe keys that never separate two runs into different groups
TOP_LEVEL_IGNORED = ("seed", "output_dir", "probe")
#: ``train`` fields that change how a run is carried out, not the weights it ends with (the data order, crops
#: and masks are functions of the seed and step, not of the worker count: jepaflow.engine.data)
TRAIN_FIELDS_IGNORED = (
    "num_workers", "checkpoint_every_steps", "checkpoint_every_epochs", "keep_epoch_checkpoints", "log_every",
    "progress", "pin_memory", "loggers", "monitor_every", "monitor_samples", "monitor_knn_every_epochs",
    "monitor_knn_samples", "dist_timeout_s",
)
#: data-section fields that say where the files are, not what they hold
DATA_FIELDS_IGNORED = ("root",)
#: probe settings that are not part of the protocol: which probes ran (a missing probe is an empty cell) and
#: which of a method's encoders was probed (methods name their encoders differently: I-JEPA's target, MAE's
#: context, SimCLR's encoder; the role is a column of the table, and runs probed in different roles are
#: different rows)
SETTINGS_NOT_PROTOCOL = ("kinds", "encoder")
#: more settings left out when a floor (pixels, timm at init) is compared with runs: it has no layers to choose
FLOOR_SETTINGS_NOT_PROTOCOL = ("layers",)
#: folders never searched for runs
SKIPPED_FOLDERS = ("checkpoints", "tensorboard", "wandb", "__pycache__")


class CompareError(JepaflowError):
    """Inputs that cannot be compared as given (nothing found, mixed probe protocols, unreadable files)."""


@dataclass
class ProbeResult:
    """What compare needs from one probe.json (one place knows the file's layout: :func:`read_probe_json`).

    ``accuracies``: ``{"linear": acc, "knn": acc, "attentive": acc, "lowshot:10%": mean over draws, ...}`` as
    fractions; ``baseline``: the same for the random-initialization baseline, when the probe ran one.
    """

    path: Path
    source_kind: str  # run, checkpoint, official, timm, pixels
    source_spec: str | None
    role: str | None
    layers: str | None
    content_hash: str | None
    accuracies: dict[str, float]
    data_section: dict[str, Any]
    splits: dict[str, Any]
    settings: dict[str, Any]
    baseline: dict[str, float] | None = None
    baseline_hash: str | None = None
    model_name: str | None = None
    seconds: float | None = None


def read_probe_json(path: Path) -> ProbeResult:
    """Read a probe.json document (schema ``jepaflow-probe``, version 1; docs/probes.md). Raises
    :class:`CompareError` for a file that is not one, or one written by an earlier jepaflow."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise CompareError(f"{path} cannot be read as JSON: {exc}", "re-run the probe to rewrite it") from None
    if not isinstance(doc, dict):
        raise CompareError(f"{path} is not a probe.json document", "re-run the probe to rewrite it")
    if "schema" not in doc and isinstance(doc.get("skipped"), str):  # the engine's record of a probe that did not run
        raise CompareError(f"{path}: the probe did not run ({doc['skipped']})",
                           f"probe the run with `jepaflow probe {Path(path).parent}`")
    if "schema" not in doc:
        raise CompareError(
            f"{path} was written by an earlier jepaflow (no schema): its linear probe did not run to convergence "
            "and its settings were not recorded",
            f"probe the run again with `jepaflow probe {Path(path).parent}`",
        )
    if doc.get("schema") != PROBE_SCHEMA or doc.get("version") not in PROBE_VERSIONS:
        raise CompareError(
            f"{path} has schema {doc.get('schema')!r} version {doc.get('version')!r}; this jepaflow reads "
            f"{PROBE_SCHEMA!r} version {', '.join(map(str, PROBE_VERSIONS))}",
            "use the jepaflow version that wrote it, or probe the run again",
        )
    try:
        src, data = doc["source"], doc["data"]
        base = (doc.get("baselines") or {}).get("random_init")
        return ProbeResult(
            path=Path(path), source_kind=src["kind"], source_spec=src.get("spec"), role=src.get("role"),
            layers=src.get("layers"), content_hash=src.get("content_hash"),
            accuracies=_headline(doc["probes"]), data_section=dict(data["section"]), splits=dict(data["splits"]),
            settings=dict(doc["settings"]),
            baseline=None if base is None else _headline(base["probes"]),
            baseline_hash=None if base is None else base.get("source", {}).get("content_hash"),
            model_name=src.get("model_name"), seconds=(doc.get("seconds") or {}).get("total"),
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise CompareError(f"{path} lacks a field of the probe.json schema ({exc!r})",
                           "re-run the probe to rewrite it") from None


def _headline(probes: dict[str, Any]) -> dict[str, float]:
    """``{"linear": acc, ..., "lowshot:<setting>": mean}`` of a probe.json ``probes`` mapping."""
    out: dict[str, float] = {}
    for kind, res in probes.items():
        if kind == "lowshot":
            out.update({f"lowshot:{name}": float(s["mean"]) for name, s in res["settings"].items()})
        else:
            out[kind] = float(res["accuracy"])
    return out


# ------------------------------------------------------------------------------------------------ run folders
@dataclass
class RunRecord:
    """A finished, probed run folder."""

    run_dir: Path
    recipe: dict[str, Any]
    summary: dict[str, Any]
    metrics: list[dict[str, Any]]
    probe: ProbeResult
    env: dict[str, Any] = field(default_factory=dict)

    @property
    def seed(self) -> int:
        return int(self.recipe.get("seed", 0))

    @property
    def objective(self) -> str:
        return str(self.recipe["objective"]["name"])

    @property
    def steps(self) -> int:
        return int(self.summary["step"])

    @property
    def batch_size(self) -> int:
        return int(self.recipe["train"]["batch_size"])

    @property
    def steps_per_epoch(self) -> int | None:
        spe = self.env.get("steps_per_epoch")
        if spe is None:  # from the metrics: step / epoch of any record
            for rec in reversed(self.metrics):
                if rec.get("epoch") and rec.get("step"):
                    return max(1, round(rec["step"] / rec["epoch"]))
            return None
        return int(spe)

    @property
    def epochs(self) -> float | None:
        spe = self.steps_per_epoch
        return None if spe is None else self.steps / spe

    @property
    def images_seen(self) -> int:
        return self.steps * self.batch_size

    @property
    def train_seconds(self) -> float | None:
        return training_seconds(self.metrics, self.batch_size)


def training_seconds(metrics: list[dict[str, Any]], batch_size: int) -> float | None:
    """Training time of a run from its metrics.jsonl: each line covers the steps since the previous line at
    ``img_per_s`` images per second (the trainer's timing window: data loading and optimizer steps, without
    the monitors, the start-up and the final probe). A resumed run's file reads as one run (the trainer drops
    lines past the resumed step), so the sum is the time spent on the steps that count."""
    total, prev, seen = 0.0, 0, False
    for rec in sorted((r for r in metrics if isinstance(r.get("step"), (int, float))), key=lambda r: r["step"]):
        rate = rec.get("img_per_s")
        steps = rec["step"] - prev
        prev = rec["step"]
        if not isinstance(rate, (int, float)) or not math.isfinite(rate) or rate <= 0 or steps <= 0:
            continue
        total += steps * batch_size / rate
        seen = True
    return total if seen else None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a metrics.jsonl file; a torn or foreign line is skipped."""
    out = []
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def run_steps(recipe: dict[str, Any], summary: dict[str, Any]) -> int:
    """The steps a run was meant to make: its total, or ``train.max_steps`` when that is smaller."""
    total = int(summary.get("total_steps") or 0)
    cap = (recipe.get("train") or {}).get("max_steps")
    return min(total, int(cap)) if cap else total


def read_run(run_dir: Path) -> RunRecord:
    """A run folder's record; :class:`CompareError` says why a folder cannot be compared (not finished, not
    probed, unreadable)."""
    try:
        recipe = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise CompareError(f"{run_dir}/recipe.yaml cannot be read: {exc}", "") from None
    if not isinstance(recipe, dict) or "objective" not in recipe:
        raise CompareError(f"{run_dir}/recipe.yaml is not a resolved jepaflow recipe", "")
    summary_path = run_dir / "summary.json"
    if not summary_path.is_file():
        raise CompareError(f"{run_dir} has no summary.json: the run has not finished (or is running)",
                           f"finish it: jepaflow run {run_dir}/recipe.yaml --output {run_dir} --resume")
    try:
        summary = json.loads(summary_path.read_text())
    except (OSError, ValueError) as exc:
        raise CompareError(f"{summary_path} cannot be read: {exc}", "") from None
    want = run_steps(recipe, summary)
    if int(summary.get("step", 0)) < want:
        raise CompareError(f"{run_dir} stopped at step {summary.get('step')} of {want}",
                           f"finish it: jepaflow run {run_dir}/recipe.yaml --output {run_dir} --resume")
    if not (run_dir / "probe.json").is_file():
        raise CompareError(f"{run_dir} has no probe.json (the recipe's probe was off, or it was interrupted)",
                           f"probe it: jepaflow probe {run_dir}")
    probe = read_probe_json(run_dir / "probe.json")
    env = {}
    try:
        env = json.loads((run_dir / "env.json").read_text())
    except (OSError, ValueError):
        pass
    return RunRecord(run_dir, recipe, summary, read_metrics(run_dir / "metrics.jsonl"), probe, env)


@dataclass
class Found:
    """Everything found under the given paths."""

    runs: list[RunRecord]
    probes: list[ProbeResult]  # standalone probe.json files (floors)
    excluded: list[tuple[Path, str]]  # (folder, why it is left out)


def _walk(root: Path) -> Iterator[tuple[Path, set[str]]]:
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        names = set(filenames)
        here = Path(dirpath)
        if "recipe.yaml" in names:
            dirnames[:] = []  # a run folder: nothing of interest below it
        else:
            dirnames[:] = sorted(d for d in dirnames if d not in SKIPPED_FOLDERS and not d.startswith("."))
        yield here, names


def discover(paths: Iterable[str | Path]) -> Found:
    """Find run folders and standalone probe.json files under ``paths`` (folders, searched recursively, or
    probe.json files). Folders that cannot be compared are listed in ``excluded`` with the reason and fix."""
    found = Found([], [], [])
    seen: set[Path] = set()
    for p in paths:
        path = Path(p)
        if not path.exists():
            raise CompareError(f"{path} does not exist", "pass run folders, sweep folders or probe.json files")
        if path.is_file():
            if path.name != "probe.json":
                raise CompareError(f"{path} is a file, not a run or sweep folder nor a probe.json",
                                   "pass run folders, sweep folders or probe.json files")
            candidates: Iterable[tuple[Path, set[str]]] = [(path.parent, {"probe.json"})]
        else:
            candidates = _walk(path)
        for folder, names in candidates:
            key = folder.resolve()
            if key in seen:
                continue
            if "recipe.yaml" in names:
                seen.add(key)
                try:
                    found.runs.append(read_run(folder))
                except CompareError as exc:
                    found.excluded.append((folder, exc.problem + (f" (fix: {exc.fix})" if exc.fix else "")))
            elif "probe.json" in names:
                seen.add(key)
                try:
                    found.probes.append(read_probe_json(folder / "probe.json"))
                except CompareError as exc:
                    found.excluded.append((folder, exc.problem + (f" (fix: {exc.fix})" if exc.fix else "")))
    return found


# ------------------------------------------------------------------------------------------------ grouping
def group_key(recipe: dict[str, Any]) -> dict[str, Any]:
    """The part of a resolved recipe that decides the trained weights (module docstring)."""
    out = {k: v for k, v in recipe.items() if k not in TOP_LEVEL_IGNORED}
    if isinstance(out.get("train"), dict):
        out["train"] = {k: v for k, v in out["train"].items() if k not in TRAIN_FIELDS_IGNORED}
    if isinstance(out.get("data"), dict):
        out["data"] = {k: v for k, v in out["data"].items() if k not in DATA_FIELDS_IGNORED}
    return out


def canonical(value: Any) -> str:
    """A stable text form of a JSON-like value (sorted keys), for hashing and equality."""
    return json.dumps(value, sort_keys=True, default=str)


def protocol(probe: ProbeResult, floor: bool = False) -> dict[str, Any]:
    """The probe protocol of one result (module docstring): what must be equal for two numbers to be compared."""
    left_out = SETTINGS_NOT_PROTOCOL + (FLOOR_SETTINGS_NOT_PROTOCOL if floor else ())
    return {
        "data": {k: v for k, v in probe.data_section.items() if k not in DATA_FIELDS_IGNORED},
        "splits": probe.splits,
        "settings": {k: v for k, v in probe.settings.items() if k not in left_out},
    }


def differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted paths where two JSON-like values differ (``settings.linear_C``, ``data.image_size``)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            path = f"{prefix}.{k}" if prefix else str(k)
            if k not in a or k not in b:
                out.append(path)
            else:
                out += differences(a[k], b[k], path)
        return out
    return [] if canonical(a) == canonical(b) else [prefix or "<value>"]


def lookup(value: Any, path: str) -> Any:
    """The value at a dotted path (None when absent)."""
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


__all__ = [
    "CompareError", "Found", "ProbeResult", "RunRecord", "canonical", "differences", "discover", "group_key",
    "lookup", "protocol", "read_probe_json", "read_run", "run_steps", "training_seconds",
]
