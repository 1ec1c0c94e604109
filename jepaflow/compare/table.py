"""From found runs and probes to the comparison: rows (methods, random-init encoders, floors), intervals over
seeds, verdicts, and the ``compare.md`` / ``compare.csv`` files. The rules are stated in docs/compare.md.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from jepaflow.compare.flops import StepFlops
from jepaflow.compare.records import (
    CompareError,
    Found,
    ProbeResult,
    RunRecord,
    canonical,
    differences,
    group_key,
    lookup,
    protocol,
)
from jepaflow.compare.stats import Interval, Verdict, mean_ci, verdict

#: probe columns in this order, then low-shot settings as found
PROBE_ORDER = ("linear", "knn", "attentive")
#: encoder fields shown in the backbone column, with their short labels
BACKBONE_FIELDS = (("model_name", ""), ("size", ""), ("embed_dim", "width "), ("depth", "depth "),
                   ("patch_size", "patch "))


@dataclass
class Row:
    """One line of the table."""

    kind: str  # "method", "random_init" or "floor"
    label: str
    backbone: str
    role: str | None
    layers: str | None
    protocol: str
    values: dict[str, list[float]]  # probe -> one value per seed (or per distinct initialization)
    runs: list[RunRecord] = field(default_factory=list)
    objective: str | None = None
    seeds: list[int] = field(default_factory=list)
    recipe: dict[str, Any] | None = None  # a method's group recipe (any of its runs')
    step_flops: StepFlops | None = None
    notes: list[str] = field(default_factory=list)
    marks: dict[str, str] = field(default_factory=dict)  # probe -> "best" | "tied"

    @property
    def intervals(self) -> dict[str, Interval]:
        return {k: mean_ci(v) for k, v in self.values.items() if v}

    @property
    def n(self) -> int:
        return max((len(v) for v in self.values.values()), default=0)

    def _mean(self, values: list[float | None]) -> float | None:
        vals = [v for v in values if v is not None]
        return sum(vals) / len(vals) if vals else None

    @property
    def steps(self) -> float | None:
        return self._mean([r.steps for r in self.runs])

    @property
    def epochs(self) -> float | None:
        return self._mean([r.epochs for r in self.runs])

    @property
    def images_seen(self) -> float | None:
        return self._mean([r.images_seen for r in self.runs])

    @property
    def wall_clock_s(self) -> float | None:
        return self._mean([r.train_seconds for r in self.runs])

    @property
    def train_flops(self) -> float | None:
        if self.step_flops is None or self.steps is None:
            return None
        return self.step_flops.flops * self.steps


@dataclass
class Comparison:
    """Every row, the probe columns, the verdicts and what was left out."""

    rows: list[Row]
    probes: list[str]
    verdicts: dict[str, Verdict | None]  # None: not judged (mixed protocols)
    protocols: dict[str, dict[str, Any]]  # id -> protocol
    mixed: list[str]  # one line per difference between protocols (empty unless --allow-mixed let them through)
    excluded: list[tuple[Path, str]]
    notes: list[str] = field(default_factory=list)

    @property
    def methods(self) -> list[Row]:
        return [r for r in self.rows if r.kind == "method"]

    @property
    def floors(self) -> list[Row]:
        return [r for r in self.rows if r.kind != "method"]


# ------------------------------------------------------------------------------------------------ building
def backbone(recipe: dict[str, Any] | None) -> str:
    """``vit tiny (width 128, depth 4, patch 4)`` from a recipe's encoder section."""
    enc = (recipe or {}).get("encoder") or {}
    if not enc:
        return "?"
    parts = [f"{label}{enc[k]}" for k, label in BACKBONE_FIELDS if enc.get(k) is not None]
    head = [p for p in parts[:2] if not p.startswith(("width", "depth", "patch"))]
    tail = [p for p in parts if p not in head]
    return " ".join([str(enc.get("name", "?")), *head]) + (f" ({', '.join(tail)})" if tail else "")


def _describe(value: Any) -> str:
    text = canonical(value)
    return text if len(text) <= 60 else text[:57] + "..."


def assign_protocols(found: Found, allow_mixed: bool) -> tuple[dict[str, dict[str, Any]], dict[int, str],
                                                                 dict[int, str], list[str]]:
    """Give every run and standalone probe a protocol id (``P1`` the most common among runs). Returns
    ``(protocols, run id -> protocol id, probe id -> protocol id, difference lines)``; raises
    :class:`CompareError` naming the first difference unless ``allow_mixed``."""
    run_protos = [canonical(protocol(r.probe)) for r in found.runs]
    order = [p for p, _ in Counter(run_protos).most_common()]
    if not order:  # floors only
        order = [p for p, _ in Counter(canonical(protocol(p, floor=True)) for p in found.probes).most_common()]
    ids = {p: f"P{i + 1}" for i, p in enumerate(order)}
    protocols = {ids[p]: _loads(p) for p in order}
    run_ids = {id(r): ids[p] for r, p in zip(found.runs, run_protos)}
    # a floor matches a protocol when they agree on everything but encoder/layers
    floor_view = {pid: canonical(_floor_view(proto)) for pid, proto in protocols.items()}
    probe_ids: dict[int, str] = {}
    for p in found.probes:
        mine = canonical(protocol(p, floor=True))
        match = next((pid for pid, fv in floor_view.items() if fv == mine), None)
        if match is None:
            match = f"P{len(protocols) + 1}"
            protocols[match] = protocol(p, floor=True)
            floor_view[match] = mine
        probe_ids[id(p)] = match

    lines = []
    ref_id = "P1"
    for pid, proto in protocols.items():
        if pid == ref_id:
            continue
        ref = protocols[ref_id] if _is_run_protocol(pid, run_ids) else _floor_view(protocols[ref_id])
        mine = proto if _is_run_protocol(pid, run_ids) else _floor_view(proto)
        where = _example(pid, found, run_ids, probe_ids)
        ref_where = _example(ref_id, found, run_ids, probe_ids)
        for path in differences(ref, mine)[:6]:
            lines.append(f"{path} is {_describe(lookup(mine, path))} in {where} but {_describe(lookup(ref, path))} "
                         f"in {ref_where} ({pid} vs {ref_id})")
    if lines and not allow_mixed:
        raise CompareError(
            "these results were measured with different data, splits or probe settings and cannot be compared: "
            + "; ".join(lines[:4]) + (f"; and {len(lines) - 4} more" if len(lines) > 4 else ""),
            "probe every run with the same settings (jepaflow probe RUN --set probe.FIELD=VALUE rewrites its "
            "probe.json), or pass --allow-mixed to tabulate them anyway, each row flagged with its protocol",
        )
    return protocols, run_ids, probe_ids, lines


def _loads(text: str) -> dict[str, Any]:
    import json

    return json.loads(text)


def _floor_view(proto: dict[str, Any]) -> dict[str, Any]:
    from jepaflow.compare.records import FLOOR_SETTINGS_NOT_PROTOCOL

    return {**proto, "settings": {k: v for k, v in proto["settings"].items() if k not in FLOOR_SETTINGS_NOT_PROTOCOL}}


def _is_run_protocol(pid: str, run_ids: dict[int, str]) -> bool:
    return pid in run_ids.values()


def _example(pid: str, found: Found, run_ids: dict[int, str], probe_ids: dict[int, str]) -> str:
    runs = [r.run_dir for r in found.runs if run_ids[id(r)] == pid]
    probes = [p.path.parent for p in found.probes if probe_ids[id(p)] == pid]
    every = runs + probes
    return f"{every[0]}" + (f" (and {len(every) - 1} more)" if len(every) > 1 else "")


def build(found: Found, allow_mixed: bool = False,
          flops: Callable[[dict[str, Any]], StepFlops | None] | None = None) -> Comparison:
    """The comparison of everything in ``found``: method rows (runs grouped by :func:`group_key` and protocol),
    random-init rows (the runs' baselines, one row per backbone, each initialization counted once), floor rows
    (standalone probes), intervals and verdicts. ``flops(recipe)`` gives a group's per-step FLOPs (or None)."""
    if not found.runs and not found.probes:
        detail = "; ".join(f"{p}: {why}" for p, why in found.excluded[:5])
        raise CompareError("found no finished, probed run" + (f" ({detail})" if detail else ""),
                           "pass folders holding runs (recipe.yaml, summary.json, probe.json), e.g. a sweep folder")
    protocols, run_ids, probe_ids, mixed = assign_protocols(found, allow_mixed)
    rows: list[Row] = []

    # ---- methods
    groups: dict[tuple[str, str, str], list[RunRecord]] = {}
    for run in found.runs:
        groups.setdefault((canonical(group_key(run.recipe)), run_ids[id(run)], str(run.probe.role)), []).append(run)
    labels = _method_labels(groups)
    for (key, pid, _), runs in groups.items():
        runs.sort(key=lambda r: r.seed)
        first = runs[0]
        row = Row("method", labels[(key, pid, _)], backbone(first.recipe), first.probe.role, first.probe.layers, pid,
                  values={}, runs=runs, objective=first.objective, seeds=[r.seed for r in runs],
                  recipe=first.recipe)
        for run in runs:
            for probe, acc in run.probe.accuracies.items():
                row.values.setdefault(probe, []).append(acc)
        dup = [s for s, c in Counter(row.seeds).items() if c > 1]
        if dup:
            row.notes.append(f"seed {', '.join(map(str, dup))} appears in more than one run folder: these runs are "
                             "repeats, not independent seeds")
        if flops is not None:
            try:
                row.step_flops = flops(first.recipe)
            except Exception as exc:  # a FLOP count that fails costs a column cell, not the comparison
                row.notes.append(f"training FLOPs not counted: {type(exc).__name__}: {exc}")
        rows.append(row)

    # ---- random-init encoders: the runs' baselines, per backbone and protocol, each initialization once
    pools: dict[tuple[str, str, str], dict[str, tuple[int, dict[str, float]]]] = {}
    pool_meta: dict[tuple[str, str, str], RunRecord] = {}
    for run in found.runs:
        if run.probe.baseline is None:
            continue
        pkey = (canonical(run.recipe.get("encoder") or {}), str(run.probe.layers), run_ids[id(run)])
        init = run.probe.baseline_hash or canonical([run.recipe.get("encoder"), run.seed])
        pools.setdefault(pkey, {}).setdefault(init, (run.seed, run.probe.baseline))
        pool_meta.setdefault(pkey, run)
    for pkey, inits in pools.items():
        run = pool_meta[pkey]
        row = Row("random_init", f"random init ({backbone(run.recipe)})", backbone(run.recipe), None,
                  run.probe.layers, pkey[2], values={}, seeds=sorted(s for s, _ in inits.values()))
        for _, accs in inits.values():
            for probe, acc in accs.items():
                row.values.setdefault(probe, []).append(acc)
        row.notes.append(f"{len(inits)} distinct initialization(s), from the runs' probe.random_init_baseline")
        rows.append(row)

    # ---- floors: standalone probes, each distinct experiment once
    floor_groups: dict[tuple[str, str, str], dict[str, ProbeResult]] = {}
    for p in found.probes:
        fkey = (p.source_kind, p.model_name or p.source_spec or "", probe_ids[id(p)])
        floor_groups.setdefault(fkey, {}).setdefault(canonical([p.content_hash, p.settings, p.layers]), p)
    for (kind, spec, pid), results in floor_groups.items():
        first = next(iter(results.values()))
        label = {"pixels": "raw pixels", "timm": f"timm:{spec} (random init)"}.get(kind, f"{kind} {spec}".strip())
        row = Row("floor", label, "-" if kind == "pixels" else spec, first.role,
                  None if kind == "pixels" else first.layers, pid, values={})
        for res in results.values():
            for probe, acc in res.accuracies.items():
                row.values.setdefault(probe, []).append(acc)
        rows.append(row)

    probes = _probe_columns(rows)
    method_protocols = {r.protocol for r in rows if r.kind == "method"}
    verdicts: dict[str, Verdict | None] = {}
    for probe in probes:
        if len(method_protocols) > 1:
            verdicts[probe] = None
            continue
        cells = {r.label: r.intervals[probe] for r in rows if r.kind == "method" and probe in r.intervals}
        v = verdict(cells)
        verdicts[probe] = v
        for r in rows:
            if r.kind != "method":
                continue
            if v.best == r.label:
                r.marks[probe] = "best"
            elif v.best is None and len(v.tied) > 1 and r.label in v.tied:
                r.marks[probe] = "tied"
    return Comparison(rows, probes, verdicts, protocols, mixed, found.excluded)


def _method_labels(groups: dict[tuple[str, str, str], list[RunRecord]]) -> dict[tuple[str, str, str], str]:
    """The objective's name; where several groups share it, the recipe fields that tell them apart, the probed
    role and the protocol id where those differ."""
    by_objective: dict[str, list[tuple[str, str, str]]] = {}
    for key, runs in groups.items():
        by_objective.setdefault(runs[0].objective, []).append(key)
    labels = {}
    for objective, keys in by_objective.items():
        if len(keys) == 1:
            labels[keys[0]] = objective
            continue
        recipes = {k: group_key(groups[k][0].recipe) for k in keys}
        paths = sorted({p for a in keys for b in keys if a != b for p in differences(recipes[a], recipes[b])})
        for k in keys:
            shown = [f"{p}={_describe(lookup(recipes[k], p))}" for p in paths[:3]]
            if len({kk[2] for kk in keys}) > 1:
                shown.append(f"encoder {k[2]}")
            if len({kk[1] for kk in keys}) > 1:
                shown.append(k[1])
            labels[k] = f"{objective} [{', '.join(shown)}]" if shown else f"{objective} [{k[1]}]"
    return labels


def _probe_columns(rows: list[Row]) -> list[str]:
    present = {p for r in rows for p in r.values}
    ordered = [p for p in PROBE_ORDER if p in present]
    seen_rest = []
    for r in rows:
        for p in r.values:
            if p not in ordered and p not in seen_rest:
                seen_rest.append(p)
    return ordered + seen_rest


# ------------------------------------------------------------------------------------------------ formatting
def fmt_interval(iv: Interval | None, mark: str = "") -> str:
    """``84.12 ± 0.35`` (percent, the half-width of the 95% interval); ``84.12 (n=1)`` without an interval."""
    if iv is None:
        return "-"
    text = f"{iv.mean * 100:.2f} ± {iv.half_width * 100:.2f}" if iv.has_interval else f"{iv.mean * 100:.2f} (n=1)"
    if mark == "best":
        return f"**{text}** best"
    if mark == "tied":
        return f"{text} (tied)"
    return text


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 10:
        return f"{s:.1f} s"
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.2f} h"


def fmt_flops(f: float | None) -> str:
    if f is None:
        return "-"
    for unit, scale in (("EFLOP", 1e18), ("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if f >= scale:
            return f"{f / scale:.3g} {unit}"
    return f"{f:.3g} FLOP"


def fmt_count(v: float | None, digits: int = 0) -> str:
    if v is None:
        return "-"
    return f"{v:,.{digits}f}"


def probe_title(probe: str) -> str:
    return probe.replace("lowshot:", "low-shot ")


def floor_relations(cmp: Comparison, probe: str) -> list[str]:
    """Per floor row: which methods lie above it, below it, or cannot be told apart from it (overlap)."""
    out = []
    for floor in cmp.floors:
        f = floor.intervals.get(probe)
        if f is None:
            continue
        above, below, level = [], [], []
        for m in cmp.methods:
            iv = m.intervals.get(probe)
            if iv is None:
                continue
            if not iv.has_interval:
                level.append(m.label)
                continue
            f_low, f_high = (f.low, f.high) if f.has_interval else (f.mean, f.mean)
            if iv.low > f_high:  # type: ignore[operator]
                above.append(m.label)
            elif iv.high < f_low:  # type: ignore[operator]
                below.append(m.label)
            else:
                level.append(m.label)
        parts = [f"above: {', '.join(above) or 'none'}", f"below: {', '.join(below) or 'none'}"]
        if level:
            parts.append(f"not distinguishable: {', '.join(level)}")
        out.append(f"{floor.label} ({fmt_interval(f)}): " + "; ".join(parts))
    return out


def markdown(cmp: Comparison, command: str | None = None, plots: list[str] | None = None,
             title: str = "Comparison") -> str:
    """The ``compare.md`` document."""
    from jepaflow import __version__

    lines = [f"# {title}", ""]
    lines.append(f"Written by `jepaflow compare` (jepaflow {__version__}) on "
                 f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}"
                 + (f" from `{command}`." if command else "."))
    lines.append("")
    lines += _protocol_lines(cmp)
    lines += ["", "## Results", ""]
    lines.append("Accuracy on the test split in percent: mean over seeds ± half-width of the two-sided 95% Student-t "
                 "confidence interval (n=1: no interval). **best** marks a row whose interval lies above every "
                 "other method's; rows whose intervals overlap the top row's are marked (tied). Floors are not "
                 "ranked.")
    lines.append("")
    header = ["method", "backbone", "encoder", "seeds", "epochs", "images seen", "train time / run",
              "train FLOPs / run"] + [probe_title(p) for p in cmp.probes]
    if cmp.mixed:
        header.append("protocol")
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] * 3 + ["---:"] * (len(header) - 3 - (1 if cmp.mixed else 0)))
                 + ("|---" if cmp.mixed else "") + "|")
    for r in cmp.rows:
        role = "-" if r.role is None and r.layers is None else f"{r.role or '-'}, {r.layers or '-'}"
        label = r.label if r.kind == "method" else f"*{r.label}* (floor)"
        cells = [label, r.backbone, role, str(r.n), fmt_count(r.epochs, 2) if r.epochs is not None else "-",
                 fmt_count(r.images_seen), fmt_seconds(r.wall_clock_s), fmt_flops(r.train_flops)]
        cells += [fmt_interval(r.intervals.get(p), r.marks.get(p, "")) for p in cmp.probes]
        if cmp.mixed:
            cells.append(r.protocol)
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines += ["", "## Verdicts", ""]
    for probe in cmp.probes:
        v = cmp.verdicts.get(probe)
        if v is None:
            lines.append(f"* {probe_title(probe)}: not judged: the methods were probed with different protocols "
                         "(--allow-mixed)")
        elif v.best is not None:
            lines.append(f"* {probe_title(probe)}: **{v.best}** is best: {v.reason}.")
        else:
            lines.append(f"* {probe_title(probe)}: no winner: {v.reason}.")
        for rel in floor_relations(cmp, probe):
            lines.append(f"  * against {rel}")
    if cmp.mixed:
        lines += ["", "## Mixed protocols (--allow-mixed)", ""]
        lines.append("Rows with different protocol ids were measured differently; their numbers are not comparable "
                     "and no winner is named.")
        lines.append("")
        lines += [f"* {m}" for m in cmp.mixed]
    if plots:
        lines += ["", "## Plots", ""]
        lines += [f"![{Path(p).stem}]({p})" for p in plots]
    lines += ["", "## Runs", ""]
    lines.append("| method | seed | run folder | steps | train time | " + " | ".join(probe_title(p) for p in cmp.probes)
                 + " |")
    lines.append("|---|---:|---|---:|---:|" + "---:|" * len(cmp.probes))
    for r in cmp.methods:
        for run in r.runs:
            accs = [f"{run.probe.accuracies[p] * 100:.2f}" if p in run.probe.accuracies else "-" for p in cmp.probes]
            lines.append(f"| {r.label} | {run.seed} | `{run.run_dir}` | {run.steps:,} | "
                         f"{fmt_seconds(run.train_seconds)} | " + " | ".join(accs) + " |")
    notes = [f"{r.label}: {n}" for r in cmp.rows for n in r.notes] + cmp.notes
    flops_notes = sorted({f"{r.label}: FLOPs {r.step_flops.note} ({fmt_flops(r.step_flops.flops)} per step)"
                          for r in cmp.methods if r.step_flops is not None})
    lines += ["", "## Notes", ""]
    lines.append("* Grouping: runs are one method when their resolved recipes agree apart from `seed`, `output_dir`, "
                 "`probe`, `data.root` and the `train` fields that do not change the weights (workers, logging, "
                 "checkpoints, monitors, progress). Train time is the sum of the training windows of "
                 "metrics.jsonl (data loading and steps; no start-up, monitors or probe), averaged over a method's "
                 "runs. Training FLOPs: one step counted with torch.utils.flop_counter (matrix products, "
                 "convolutions, attention; forward and backward) times the steps.")
    lines += [f"* {n}" for n in flops_notes + notes]
    if cmp.excluded:
        lines += ["", "## Left out", ""]
        lines += [f"* `{p}`: {why}" for p, why in cmp.excluded]
    return "\n".join(lines) + "\n"


def _protocol_lines(cmp: Comparison) -> list[str]:
    out = ["## Protocol", ""]
    for pid, proto in cmp.protocols.items():
        data, splits, s = proto["data"], proto["splits"], proto["settings"]
        prefix = f"{pid}: " if len(cmp.protocols) > 1 else ""
        out.append(f"* {prefix}data `{data.get('name')}`: {splits.get('train', '?')} train images "
                   f"({splits.get('fit', '?')} fit / {splits.get('val', '?')} validation) and {splits.get('test', '?')} "
                   f"test images.")
        shown = {k: v for k, v in s.items() if k in ("layers", "encoder", "linear_C", "knn_k", "knn_temperature",
                                                      "val_fraction", "seed", "train_samples", "test_samples")}
        out.append(f"  Probe settings: {', '.join(f'{k}={_describe(v)}' for k, v in shown.items())} "
                   "(all settings in each run's probe.json; protocols in docs/probes.md).")
    return out


def csv_text(cmp: Comparison) -> str:
    """The ``compare.csv`` table: one row per method / floor; accuracies as fractions (mean, interval, n)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    head = ["kind", "label", "objective", "backbone", "role", "layers", "protocol", "n", "seeds", "epochs",
            "steps", "images_seen", "train_seconds_per_run", "step_flops", "train_flops_per_run"]
    for p in cmp.probes:
        head += [f"{p}_mean", f"{p}_ci_low", f"{p}_ci_high", f"{p}_half_width", f"{p}_std", f"{p}_n", f"{p}_mark"]
    w.writerow(head)

    def num(v: float | None) -> str:
        return "" if v is None else repr(float(v))

    for r in cmp.rows:
        cells = [r.kind, r.label, r.objective or "", r.backbone, r.role or "", r.layers or "", r.protocol, r.n,
                 " ".join(map(str, r.seeds)), num(r.epochs), num(r.steps), num(r.images_seen), num(r.wall_clock_s),
                 num(r.step_flops.flops if r.step_flops else None), num(r.train_flops)]
        for p in cmp.probes:
            iv = r.intervals.get(p)
            if iv is None:
                cells += [""] * 7
            else:
                cells += [num(iv.mean), num(iv.low), num(iv.high), num(iv.half_width), num(iv.std), iv.n,
                          r.marks.get(p, "")]
        w.writerow(cells)
    return buf.getvalue()


__all__ = ["Comparison", "Row", "assign_protocols", "backbone", "build", "csv_text", "floor_relations",
           "fmt_interval", "markdown"]
