#!/usr/bin/env python
"""Every built-in method on Fashion-MNIST at one equal budget, three seeds, probed and compared, in one command.

    python benchmarks/compare_fashion_mnist.py

trains ``recipes/fashion_mnist_{ijepa,mae,simclr,vicreg,byol,data2vec,lejepa}.yaml`` with seeds 0, 1, 2 through
``jepaflow sweep`` (into ``runs/compare_fashion_mnist``; the same command resumes a stopped benchmark and skips the
finished runs), probes each run at its end (kNN and linear; ``--attentive`` adds the attentive probe), runs
``jepaflow compare`` on the sweep, and writes ``docs/results/fashion_mnist.md`` with the table, the verdicts, the
plots (``docs/results/fashion_mnist/``), the command, the machine, the date, the versions and the time each piece
took.

**The budget: equal images seen.** Every method trains ``--epochs`` epochs (default 1: 60,000 images, 234 steps of
the recipes' batch 256) with its own recipe otherwise unchanged; the schedules that the recipes write in epochs or
steps are scaled with it (warmup: 1 of 6 epochs becomes 1/6 of an epoch; data2vec's EMA ramp: 3 of 6 epochs
becomes half the run). Equal images seen is the axis SSL papers compare methods on (epochs of the data set), it
is reproducible (a wall-clock budget depends on the machine and its load), and the compute it costs each method
is not hidden: training time and training FLOPs per run are columns of the table, and ``accuracy_vs_compute.png``
plots accuracy against them. One epoch is what fits: measured step throughput on the 2-core development machine
(docs/benchmarks.md) gives 29.7 ms of training per image for the seven methods together, so one epoch x 3 seeds
is about 89 minutes, and the 21 end-of-run probes (full train and test splits) plus the raw-pixel floor fill most
of the remaining half hour.

The random-initialization baseline is probed on the I-JEPA runs only: all seven recipes build the same encoder
with the same seed first, so their random-init encoders are identical (the script checks it, and probes the
baseline of every run when it is not so).

A reduced budget: ``--epochs``, ``--methods ijepa,mae``, ``--seeds 2``, and ``--output DIR`` (the sweep folder;
the results still go to ``docs/results/`` unless ``--results`` says otherwise).

A quick end-to-end check of the pipeline, ``--smoke``: I-JEPA and MAE (or ``--methods``), 2 seeds, the first 512
images of each split, one epoch (2 steps of batch 256), results under ``OUTPUT/results`` (never docs/). Measured
on the 2-core development machine: 2.3 CPU-minutes (user time); 13 minutes of wall
time at ``nice -n 10`` with a load average of 7-8 from other work. tests/benchmarks/test_compare_fashion_mnist.py checks the budget and that every recipe
validates with it:

    python benchmarks/compare_fashion_mnist.py --smoke --output /tmp/cmp_fm
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
METHODS = ("ijepa", "mae", "simclr", "vicreg", "byol", "data2vec", "lejepa")


#: --smoke: the recipes as they are, on the first 512 images of each split (2 steps of batch 256 per epoch)
SMOKE_METHODS = ("ijepa", "mae")
SMOKE_IMAGES = 512
SMOKE_OVERRIDES = [f"data.limit={SMOKE_IMAGES}", "train.log_every=1", "train.monitor_every=1"]


def recipe_path(method: str) -> Path:
    return REPO_ROOT / "recipes" / f"fashion_mnist_{method}.yaml"


def budget_overrides(path: Path, epochs: int, train_images: int = 60_000) -> list[str]:
    """``--set`` values giving a recipe the budget: ``optim.epochs``, and its epoch- and step-valued schedules
    scaled with it (warmup epochs by the epoch factor; an EMA ramp written in steps kept at the same fraction of
    the run, over ``train_images`` images per epoch at the recipe's batch)."""
    raw = yaml.safe_load(path.read_text())
    optim = raw.get("optim") or {}
    base = int(optim.get("epochs", 1))
    out = [f"optim.epochs={epochs}"]
    if "warmup_epochs" in optim:
        out.append(f"optim.warmup_epochs={round(float(optim['warmup_epochs']) * epochs / base, 6)}")
    ramp = (raw.get("target_updater") or {}).get("ramp_steps")
    if ramp:
        batch = int((raw.get("train") or {}).get("batch_size", 256))
        fraction = int(ramp) / (base * (60_000 // batch))  # of the recipe's own run, on the full training split
        out.append(f"target_updater.ramp_steps={max(1, round(fraction * epochs * (train_images // batch)))}")
    return out


def initializations_agree(paths: list[Path], overrides: dict[str, list[str]]) -> bool:
    """Whether every recipe's representation encoder at its initialization (seed 0) has the same weights."""
    import torch

    from jepaflow.config import load_recipe
    from jepaflow.engine.build import build_objective

    digests = set()
    for path in paths:
        r = load_recipe(path, overrides[str(path)])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(r.seed)
            encoder = build_objective(r).representation_encoder()
        h = hashlib.sha256()
        for name, tensor in sorted(encoder.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().contiguous().numpy().tobytes())
        digests.add(h.hexdigest())
    return len(digests) == 1


def machine() -> dict[str, str]:
    info = {"cpu": platform.processor() or "unknown", "cpus": str(os.cpu_count())}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        info["cpu"] = fields.get("Model name", info["cpu"])
        info["cpus"] = fields.get("CPU(s)", info["cpus"])
        cores = fields.get("Core(s) per socket")
        sockets = fields.get("Socket(s)")
        if cores and sockets:
            info["cores"] = str(int(cores) * int(sockets))
        info["threads_per_core"] = fields.get("Thread(s) per core", "?")
    except (OSError, subprocess.SubprocessError, ValueError):
        pass
    try:
        mem = next(line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
        info["memory"] = f"{int(mem.split()[1]) / 2**20:.0f} GiB"
    except (OSError, StopIteration, ValueError):
        pass
    try:
        info["load"] = " ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        pass
    return info


def versions() -> dict[str, str]:
    import torch

    import jepaflow

    commit = "?"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                                text=True, timeout=10).stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        pass
    return {"jepaflow": jepaflow.__version__, "git": commit, "torch": torch.__version__,
            "python": platform.python_version()}


def timing_rows(sweep_dir: Path, methods: list[str]) -> list[str]:
    """Per method: mean training time, end-of-run probe time and whole-run time (child process, start-up
    included; only for runs made by the last invocation) over its runs."""
    manifest = json.loads((sweep_dir / "sweep.json").read_text())
    rows = ["| method | runs | training / run | end-of-run probe / run | whole run (process) / run |",
            "|---|---:|---:|---:|---:|"]
    from jepaflow.compare.records import read_metrics, training_seconds

    for method in methods:
        stem = f"fashion_mnist_{method}"
        train, probe, whole = [], [], []
        for entry in manifest["runs"]:
            if not entry["run_dir"].startswith(stem + "/") or entry["state"] != "done":
                continue
            run = sweep_dir / entry["run_dir"]
            recipe = yaml.safe_load((run / "recipe.yaml").read_text())
            t = training_seconds(read_metrics(run / "metrics.jsonl"), recipe["train"]["batch_size"])
            if t is not None:
                train.append(t)
            summary = json.loads((run / "summary.json").read_text())
            if isinstance(summary.get("probe"), dict) and "seconds" in summary["probe"]:
                probe.append(float(summary["probe"]["seconds"]))
            if entry.get("outcome") == "done" and entry.get("seconds"):
                whole.append(float(entry["seconds"]))

        def mean(v: list[float]) -> str:
            return "-" if not v else f"{sum(v) / len(v) / 60:.1f} min"

        rows.append(f"| {method} | {len(train)} | {mean(train)} | {mean(probe)} | {mean(whole)} |")
    return rows


def parse_methods(text: str | None, smoke: bool) -> list[str]:
    """``--methods a,b`` -> ``["a", "b"]`` in the order given (default: all seven; two under ``--smoke``)."""
    if not text:
        return list(SMOKE_METHODS if smoke else METHODS)
    methods = [m.strip().lower() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods or len(set(methods)) != len(methods):
        raise SystemExit(f"error: --methods {text!r}: each of {', '.join(METHODS)} at most once "
                         f"(unknown: {', '.join(unknown) or 'none'})")
    return methods


def write_results(path: Path, compare_dir: Path, sweep_dir: Path, command: str, epochs: int, seeds: int,
                  kinds: list[str], baseline_note: str, started: float, code: int, compare_s: float,
                  methods: list[str], smoke: bool) -> None:
    rel = os.path.relpath(compare_dir, path.parent)
    body = (compare_dir / "compare.md").read_text().splitlines()
    # the comparison's own sections, one level down, its images relative to this file
    shifted = []
    for line in body[1:]:
        if line.startswith("#"):
            line = "#" + line
        line = line.replace("](", f"]({rel}/") if line.startswith("![") else line
        shifted.append(line)
    m, v = machine(), versions()
    total = time.time() - started
    images = SMOKE_IMAGES if smoke else 60_000
    lines = [
        f"# Fashion-MNIST: {len(methods)} built-in methods at one budget" + (" (SMOKE TEST: not a result)"
                                                                              if smoke else ""),
        "",
        f"Written by `benchmarks/compare_fashion_mnist.py` on {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}.",
        "",
        "## Setup",
        "",
        f"* Methods: {', '.join(methods)} (`recipes/fashion_mnist_<method>.yaml`, each unchanged but for the budget).",
        f"* Budget: **equal images seen**: {epochs} epoch(s) of the {images:,} training images for every method "
        f"({epochs * images:,} images, {epochs * (images // 256)} steps of batch 256), schedules written in epochs or steps "
        "scaled to it (warmup, data2vec's EMA ramp). Compute differs by method and is reported: training time "
        "and training FLOPs per run below, accuracy against FLOPs in the plots. Why this budget: see the "
        "docstring of the script (equal images seen is the usual axis, and reproducible; one epoch x 3 seeds of "
        "all seven methods, probes included, is what fits in about 2 hours on 2 CPU cores).",
        f"* Seeds: {seeds} per method (0..{seeds - 1}); accuracy is the mean ± the half-width of the two-sided 95% "
        "Student-t interval over them.",
        f"* Probes (end of each run, full train and test splits unless the command says otherwise): "
        f"{', '.join(kinds)}, as in docs/probes.md. {baseline_note}",
        f"* Command: `{command}`",
        f"* Machine: {m.get('cpu')}, {m.get('cpus')} logical CPUs ({m.get('cores', '?')} cores), "
        f"{m.get('memory', '?')} memory; load average at the end {m.get('load', '?')}.",
        f"* Versions: jepaflow {v['jepaflow']} (git {v['git']}), torch {v['torch']}, Python {v['python']}.",
        f"* Wall time of this invocation: {total / 60:.1f} min (compare, FLOP counts and the pixel floor "
        f"included: {compare_s / 60:.1f} min); sweep exit code {code}.",
        "",
        "## Time per piece",
        "",
        *timing_rows(sweep_dir, methods),
        "",
        *shifted,
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=1, help="the budget: epochs for every method (default 1)")
    parser.add_argument("--methods", default=None, metavar="A,B,...",
                        help=f"comma-separated subset of {','.join(METHODS)} (default: all)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per method (default 3; 2 with --smoke)")
    parser.add_argument("--output", default="runs/compare_fashion_mnist", help="the sweep folder")
    parser.add_argument("--results", default=None,
                        help="folder receiving fashion_mnist.md and fashion_mnist/ (plots, compare.md, compare.csv); "
                        "default docs/results, or OUTPUT/results with --smoke")
    parser.add_argument("--smoke", action="store_true",
                        help="pipeline check: 2 methods (unless --methods), 2 seeds, 512 images per split")
    parser.add_argument("--attentive", action="store_true", help="also run the attentive probe (slower)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                        help="extra override for every recipe, applied last (e.g. train.max_steps=5); may repeat")
    args = parser.parse_args(argv)
    methods = parse_methods(args.methods, args.smoke)
    if args.seeds is None:
        args.seeds = 2 if args.smoke else 3
    if args.epochs < 1 or args.seeds < 1:
        parser.error("--epochs and --seeds must be at least 1")
    if args.results is None:
        args.results = str(Path(args.output) / "results") if args.smoke else str(REPO_ROOT / "docs" / "results")
    started = time.time()
    command = shlex.join(["python", "benchmarks/compare_fashion_mnist.py", *(argv if argv is not None else
                                                                             sys.argv[1:])])

    from rich.console import Console

    from jepaflow.compare import compare
    from jepaflow.errors import JepaflowError
    from jepaflow.sweep import plan, run_sweep

    console = Console()
    paths = [recipe_path(m) for m in methods]
    kinds = ["linear", "knn"] + (["attentive"] if args.attentive else [])
    common = ["train.log_every=10", "train.monitor_every=20", f"probe.kinds=[{', '.join(kinds)}]",
              "probe.random_init_baseline=false"]
    per_recipe = {str(p): budget_overrides(p, args.epochs, SMOKE_IMAGES if args.smoke else 60_000) for p in paths}
    if initializations_agree(paths, per_recipe):
        per_recipe[str(paths[0])].append("probe.random_init_baseline=true")
        baseline_note = (f"The random-init baseline is probed on the {methods[0]} runs: every recipe's encoder at "
                         "initialization has the same weights for a given seed (checked by the script).")
    else:
        for p in paths:
            per_recipe[str(p)].append("probe.random_init_baseline=true")
        baseline_note = "The random-init baseline is probed on every run (the recipes' initializations differ)."
    # the user's --set comes last, after the budget, so that it can change anything
    smoke = SMOKE_OVERRIDES if args.smoke else []
    per_recipe = {k: v + smoke + list(args.overrides) for k, v in per_recipe.items()}
    seeds = list(range(args.seeds))
    sweep_dir = Path(args.output)
    try:
        runs = plan(paths, seeds, common, sweep_dir, per_recipe=per_recipe)
    except JepaflowError as exc:
        console.print(f"error: {exc.problem}\n  fix: {exc.fix}", markup=False)
        return 2
    code = run_sweep(runs, sweep_dir, seeds, common, command=shlex.split(command), console=console)
    if code in (130, 143):
        console.print("stopped: run the same command again to continue the benchmark")
        return code
    results = Path(args.results)
    t0 = time.time()
    try:
        compare([sweep_dir], results / "fashion_mnist", command=None,
                title=f"Fashion-MNIST: {len(methods)} methods at one budget",
                log=lambda msg: console.print(f"jepaflow: {msg}", markup=False))
    except JepaflowError as exc:
        console.print(f"error: {exc.problem}\n  fix: {exc.fix}", markup=False)
        return 2
    compare_s = time.time() - t0
    write_results(results / "fashion_mnist.md", results / "fashion_mnist", sweep_dir, command, args.epochs,
                  args.seeds, kinds, baseline_note, started, code, compare_s, methods, args.smoke)
    console.print(f"wrote {results / 'fashion_mnist.md'} (sweep exit code {code})")
    return code


if __name__ == "__main__":
    sys.exit(main())
