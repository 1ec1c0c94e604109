#!/usr/bin/env python
"""Training-step speed and memory of jepaflow recipes, printed as a markdown table.

Two modes:

* default, the **model step**: for each recipe, the objective, masker, target updater and optimizer are built
  exactly as the trainer builds them (``jepaflow.engine.build``, ``jepaflow.engine.optim``), batches are made of
  random images of the recipe's size and masks sampled by the recipe's masker through the trainer's collator,
  and one optimizer step of :func:`jepaflow.engine.trainer.train` is timed: learning-rate/weight-decay update,
  forward (with the trainer's autocast), backward over ``optim.accum_steps`` micro-batches, optional grad clip,
  AdamW step and the target update (EMA). Data loading, the host-to-device copy of the batch and the metric
  logging are outside the timed region.
* ``--loader``, the **input pipeline alone**: the trainer's DataLoader path (``epoch_loader`` with the recipe's
  data set, sampler, masking collator, ``train.num_workers`` and pinning), in global batches per second, to
  compare with the model step's ``1000 / ms per step``.

Each recipe runs in its own Python process, so that peak memory (``ru_maxrss`` on CPU,
``torch.cuda.max_memory_allocated`` on CUDA) belongs to that recipe alone and one failure (e.g. out of memory)
becomes a row of the table instead of ending the run.

    python benchmarks/train_throughput.py --recipes recipes/quickstart.yaml --steps 10 --warmup 2
    python benchmarks/train_throughput.py --recipes recipes/ijepa_vitb.yaml --batch-size 8 --threads 2
    python benchmarks/train_throughput.py --recipes recipes/fashion_mnist_ijepa.yaml --loader
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from jepaflow.config import Recipe, load_recipe
from jepaflow.engine.build import build_dataset, build_encoder, build_masker, build_objective
from jepaflow.engine.data import MaskingCollator, SeededItems, StepBatchSampler, epoch_loader
from jepaflow.engine.distributed import init_distributed
from jepaflow.engine.trainer import TrainStep, autocast_for  # the trainer's own step and precision rule
from jepaflow.errors import DataError, JepaflowError
from jepaflow.interfaces import Batch, MaskBatch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, machine_lines  # noqa: E402

DEFAULT_RECIPES = ["recipes/quickstart.yaml", "recipes/fashion_mnist_ijepa.yaml"]
RESULT_TAG = "JEPAFLOW_BENCH_RESULT "
#: schedule length used for the learning-rate, weight-decay and momentum values (they do not change the speed)
NOMINAL_SCHEDULE_STEPS = 10_000


# ------------------------------------------------------------------------------------------------ helpers
def resolve_recipe_path(path: str) -> Path:
    """``path`` as given, or relative to the repository root (so the script runs from any directory)."""
    p = Path(path)
    if p.exists() or p.is_absolute():
        return p
    return REPO_ROOT / p if (REPO_ROOT / p).exists() else p


def load(path: str, overrides: list[str], batch_size: int | None) -> Recipe:
    """The recipe with the ``--set`` overrides and ``--batch-size`` applied (validated by ``load_recipe``)."""
    extra = [f"train.batch_size={batch_size}"] if batch_size is not None else []
    return load_recipe(resolve_recipe_path(path), list(overrides) + extra)


def image_shape(recipe: Recipe) -> tuple[int, int]:
    """``(channels, side)`` of the recipe's images: the data section's, else the encoder's."""
    data = recipe.components["data"].config
    enc = recipe.components.get("encoder")
    enc_cfg = enc.config if enc is not None else None
    side = getattr(data, "image_size", None) or getattr(enc_cfg, "img_size", None)
    chans = getattr(data, "channels", None) or getattr(enc_cfg, "in_chans", None) or 3
    if side is None:
        raise JepaflowError("cannot tell the image size of this recipe (no data.image_size nor encoder.img_size)",
                            "set data.image_size")
    return int(chans), int(side)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in [0, 100]) of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory(device: torch.device) -> tuple[float, str]:
    """``(MiB, kind)``: this process's peak resident set on CPU, the peak CUDA allocation on GPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "CUDA alloc"
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kib / 1024, "RSS"


def mask_counts(masks: MaskBatch | None) -> tuple[float, float] | None:
    """Mean ``(context patches, predicted target patches)`` per image of one micro-batch; target patches are
    summed over the ``M`` blocks (a patch in two blocks is predicted twice), padding excluded."""
    if masks is None:
        return None
    B, K_ctx = masks.context.shape
    ctx = float(masks.context_valid.sum()) / B if masks.context_valid is not None else float(K_ctx)
    M, K_tgt = masks.targets.shape[1:]
    tgt = float(masks.targets_valid.sum()) / B if masks.targets_valid is not None else float(M * K_tgt)
    return ctx, tgt


class RandomImages(torch.utils.data.Dataset):
    """Stands in for the recipe's data set: ``(image, -1)`` items of the recipe's size, made once (``count``
    distinct images, reused). ``image`` is a normalized ``(C, S, S)`` float tensor, or, when the recipe has a
    view sampler, that sampler's list of views of a random uint8 image (as the data set would hand it)."""

    def __init__(self, recipe: Recipe, count: int):
        chans, side = image_shape(recipe)
        g = torch.Generator().manual_seed(recipe.seed)
        self.views = None
        if "views" in recipe.components:
            from jepaflow.engine.build import build_views  # only recipes with a view sampler need it

            self.views = build_views(recipe)
            self.images = torch.randint(0, 256, (count, chans, side, side), dtype=torch.uint8, generator=g)
        else:
            self.images = torch.randn(count, chans, side, side, generator=g)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = self.images[index]
        return (self.views(image) if self.views is not None else image), -1


def synthetic_micro_batch(items: SeededItems, collator: MaskingCollator, step: int, slot: int) -> Batch:
    """Micro-batch ``slot`` of ``step`` through the trainer's item wrapper and collator (masks seeded as in
    training), from random images instead of the data set."""
    return collator([items[(step, slot, pos, pos)] for pos in range(len(items))])


def encoder_grid(recipe: Recipe) -> tuple[int, int]:
    """The patch grid the masker samples on (the trainer reads it off the built encoder). Built on the meta
    device when possible, so that a ViT-H need not be allocated just to read its grid."""
    try:
        with torch.device("meta"):
            return tuple(build_encoder(recipe).grid_size)
    except (RuntimeError, NotImplementedError, TypeError, ValueError):
        return tuple(build_encoder(recipe).grid_size)


# ------------------------------------------------------------------------------------------------ model step
def bench_step(recipe: Recipe, steps: int, warmup: int) -> dict[str, Any]:
    """Time ``warmup + steps`` optimizer steps of the trainer's loop on synthetic batches; keep the last ``steps``."""
    info = init_distributed(recipe.train.device)
    dev, o_cfg = info.device, recipe.optim
    G, accum = recipe.train.batch_size, o_cfg.accum_steps
    micro = G // accum

    start_mem, _ = peak_memory(dev)  # the interpreter, torch and jepaflow, before any model exists
    # ---- built exactly as jepaflow.engine.trainer._train builds them
    torch.manual_seed(recipe.seed)
    objective = build_objective(recipe).to(dev)
    masker = build_masker(recipe)
    grid = objective.representation_encoder().grid_size
    if masker is not None:
        masker.check(grid)
    # schedules as if an epoch were NOMINAL_SCHEDULE_STEPS / epochs steps (values do not change the speed)
    trainer = TrainStep(recipe, objective, dev, steps_per_epoch=max(1, NOMINAL_SCHEDULE_STEPS // o_cfg.epochs))
    params = trainer.params
    collator = MaskingCollator(masker, grid, recipe.seed)
    items = SeededItems(RandomImages(recipe, micro), recipe.seed)

    step_s: list[float] = []
    ctx_counts: list[float] = []
    tgt_counts: list[float] = []
    for step in range(warmup + steps):
        # ---- not timed: the input (collated on the host as the DataLoader would, then moved to the device)
        micro_batches: list[Batch] = []
        for j in range(accum):
            batch = synthetic_micro_batch(items, collator, step, j)
            counts = mask_counts(batch.masks)
            if counts is not None:
                ctx_counts.append(counts[0])
                tgt_counts.append(counts[1])
            micro_batches.append(batch.to(dev))
        sync(dev)
        t0 = time.perf_counter()
        trainer.step(micro_batches)  # ---- timed: the trainer's own optimizer step
        sync(dev)
        if step >= warmup:
            step_s.append(time.perf_counter() - t0)
        trainer.win_sums.clear()  # the loop reads and clears them every log_every steps

    mem, mem_kind = peak_memory(dev)
    median = statistics.median(step_s)
    return {
        "mode": "step",
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "precision": "bf16" if isinstance(autocast_for(recipe, dev), torch.autocast) else "fp32",
        "threads": torch.get_num_threads(),
        "batch": G,
        "accum_steps": accum,
        "params_m": sum(p.numel() for p in params) / 1e6,
        "ctx_patches": statistics.fmean(ctx_counts) if ctx_counts else None,
        "tgt_patches": statistics.fmean(tgt_counts) if tgt_counts else None,
        "num_patches": grid[0] * grid[1],
        "ms_median": 1000 * median,
        "ms_p90": 1000 * percentile(step_s, 90),
        "img_per_s": G / median,
        "peak_mem_mib": mem,
        "mem_kind": mem_kind,
        "start_mem_mib": start_mem,
        "nonfinite_loss": bool(trainer.nonfinite),
        "steps": steps,
        "warmup": warmup,
    }


# ------------------------------------------------------------------------------------------------ loader
def bench_loader(recipe: Recipe, steps: int, warmup: int) -> dict[str, Any]:
    """Time the trainer's DataLoader path alone: global batches (``accum_steps`` micro-batches each) per second."""
    info = init_distributed(recipe.train.device)
    dev, t_cfg = info.device, recipe.train
    G, accum = t_cfg.batch_size, recipe.optim.accum_steps
    t_build = time.perf_counter()
    dataset = build_dataset(recipe, "train", augment=True)
    build_s = time.perf_counter() - t_build
    steps_per_epoch = len(dataset) // G
    if steps_per_epoch == 0:
        raise DataError(f"the data set has {len(dataset)} images, fewer than one global batch ({G})",
                        "lower --batch-size")
    masker = build_masker(recipe)
    grid = encoder_grid(recipe)
    if masker is not None:
        masker.check(grid)
    pin = t_cfg.pin_memory and dev.type == "cuda"

    def micro_batches() -> Iterator[Batch]:
        epoch = 0
        while True:  # a new loader per epoch, as the trainer does (workers restart each epoch)
            sampler = StepBatchSampler(len(dataset), seed=recipe.seed, epoch=epoch, steps_per_epoch=steps_per_epoch,
                                       global_batch=G, world_size=1, rank=0, accum_steps=accum)
            collator = MaskingCollator(masker, grid, recipe.seed)
            yield from epoch_loader(dataset, collator, sampler, seed=recipe.seed, epoch=epoch,
                                    num_workers=t_cfg.num_workers, pin_memory=pin)
            epoch += 1

    def next_step(it: Iterator[Batch]) -> None:
        for _ in range(accum):
            next(it).to(dev, non_blocking=True)

    it = micro_batches()
    t0 = time.perf_counter()
    next_step(it)
    sync(dev)
    first_s = time.perf_counter() - t0
    for _ in range(max(0, warmup - 1)):
        next_step(it)
    sync(dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        next_step(it)
    sync(dev)
    elapsed = time.perf_counter() - t0
    return {
        "mode": "loader",
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "dataset": recipe.components["data"].name,
        "num_images": len(dataset),
        "num_workers": t_cfg.num_workers,
        "pin_memory": pin,
        "threads": torch.get_num_threads(),
        "batch": G,
        "accum_steps": accum,
        "batches_per_s": steps / elapsed,
        "ms_per_batch": 1000 * elapsed / steps,
        "img_per_s": steps * G / elapsed,
        "first_batch_s": first_s,
        "dataset_build_s": build_s,
        "steps": steps,
        "warmup": warmup,
    }


# ------------------------------------------------------------------------------------------------ driver
def run_one(args: argparse.Namespace, recipe_path: str) -> dict[str, Any]:
    """Benchmark one recipe in this process."""
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    recipe = load(recipe_path, args.set, args.batch_size)
    fn = bench_loader if args.loader else bench_step
    return {"recipe": recipe_path, **fn(recipe, args.steps, args.warmup)}


def run_isolated(args: argparse.Namespace, recipe_path: str) -> dict[str, Any]:
    """Benchmark one recipe in a fresh interpreter (its own peak memory); a failure becomes an ``error`` row."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_child", "--recipes", recipe_path,
           "--steps", str(args.steps), "--warmup", str(args.warmup)]
    if args.batch_size is not None:
        cmd += ["--batch-size", str(args.batch_size)]
    if args.threads is not None:
        cmd += ["--threads", str(args.threads)]
    if args.set:
        cmd += ["--set", *args.set]
    if args.loader:
        cmd.append("--loader")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.stderr.strip():
        sys.stderr.write(proc.stderr)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
    reason = next((ln for ln in reversed(lines) if "Error" in ln or "error" in ln), lines[-1] if lines else "")
    return {"recipe": recipe_path, "error": f"exit {proc.returncode}: {reason[:160]}"}


def _fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return str(v).replace("|", "\\|")


def step_table(rows: list[dict[str, Any]]) -> list[str]:
    head = ["recipe", "device", "precision", "threads", "batch", "params (M)", "ctx patches/img",
            "tgt patches/img", "ms/step median", "ms/step p90", "img/s", "peak memory (MiB)"]
    out = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * (len(head) - 3)) + "|"]
    for r in rows:
        name = Path(r["recipe"]).name
        if "error" in r:
            out.append("| " + " | ".join([name, f"failed: {_fmt(r['error'])}"] + [""] * (len(head) - 2)) + " |")
            continue
        batch = f"{r['batch']}" + (f" ({r['accum_steps']} x {r['batch'] // r['accum_steps']})"
                                   if r["accum_steps"] > 1 else "")
        n = r["num_patches"]
        ctx = f"{r['ctx_patches']:.1f} / {n}" if r["ctx_patches"] is not None else "-"
        tgt = f"{r['tgt_patches']:.1f} / {n}" if r["tgt_patches"] is not None else "-"
        mem = f"{r['peak_mem_mib']:,.0f} ({r['mem_kind']}; {r['start_mem_mib']:,.0f} before build)"
        flag = " (non-finite loss!)" if r["nonfinite_loss"] else ""
        out.append("| " + " | ".join([
            name, r["device"], r["precision"], str(r["threads"]), batch, _fmt(r["params_m"], 2), ctx, tgt,
            _fmt(r["ms_median"]), _fmt(r["ms_p90"]), _fmt(r["img_per_s"]) + flag, mem,
        ]) + " |")
    return out


def loader_table(rows: list[dict[str, Any]]) -> list[str]:
    head = ["recipe", "data set", "images", "workers", "batch", "batches/s", "ms/batch", "img/s",
            "first batch (s)", "data set build (s)"]
    out = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|"]
    for r in rows:
        name = Path(r["recipe"]).name
        if "error" in r:
            out.append("| " + " | ".join([name, f"failed: {_fmt(r['error'])}"] + [""] * (len(head) - 2)) + " |")
            continue
        batch = f"{r['batch']}" + (f" ({r['accum_steps']} x {r['batch'] // r['accum_steps']})"
                                   if r["accum_steps"] > 1 else "")
        out.append("| " + " | ".join([
            name, r["dataset"], f"{r['num_images']:,}", str(r["num_workers"]), batch, _fmt(r["batches_per_s"], 2),
            _fmt(r["ms_per_batch"]), _fmt(r["img_per_s"]), _fmt(r["first_batch_s"], 2),
            _fmt(r["dataset_build_s"], 2),
        ]) + " |")
    return out


def report(args: argparse.Namespace, rows: list[dict[str, Any]], command: str) -> str:
    if args.loader:
        title = "# jepaflow input pipeline throughput (DataLoader alone)"
        what = (f"Timed: {args.steps} global batches after {args.warmup} warm-up batches of the trainer's "
                "DataLoader path (data set with its pretraining transform, step sampler, masking collator, "
                "`train.num_workers` workers, pinned memory on CUDA) including the copy to the device; no model. "
                "'first batch' includes the worker start-up, paid again at every epoch. The model step sustains "
                "1000 / (ms/step) batches/s: a loader slower than that is the bottleneck.")
        table = loader_table(rows)
    else:
        title = "# jepaflow training-step throughput"
        what = (f"Timed: {args.steps} optimizer steps after {args.warmup} warm-up steps, each the trainer's step "
                "(forward, backward over the micro-batches, AdamW step, EMA target update) on random images and "
                "masks sampled by the recipe's masker, already on the device: data loading excluded (see "
                "`--loader`). img/s = batch / median step time. Patches/img: mean context patches and predicted "
                "target patches (summed over the target blocks) per image, over the grid size. Peak memory: "
                "process peak resident set on CPU (includes Python and torch), `torch.cuda.max_memory_allocated` "
                "on CUDA; each recipe runs in its own process.")
        table = step_table(rows)
    return "\n".join([title, "", *machine_lines(command), "", what, "", *table, ""])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", nargs="+", default=DEFAULT_RECIPES, help="recipe YAML files")
    p.add_argument("--steps", type=int, default=10, help="timed steps (or batches with --loader)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--batch-size", type=int, default=None, help="global batch (default: the recipe's)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--set", nargs="*", default=[], metavar="PATH=VALUE", help="recipe overrides, as `jepaflow run`")
    p.add_argument("--loader", action="store_true", help="time the DataLoader path alone instead of the model")
    p.add_argument("--out", default=None, help="also write the markdown report to this file")
    p.add_argument("--append", action="store_true", help="append to --out instead of overwriting it (e.g. the "
                   "--loader table under the step table)")
    p.add_argument("--no-isolate", action="store_true", help="run every recipe in this process (peak memory is "
                   "then the maximum so far)")
    p.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")
    if args.loader and args.warmup < 1:
        args.warmup = 1  # the first batch (worker start-up) is always reported apart
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args._child:
        try:
            result = run_one(args, args.recipes[0])
        except JepaflowError as exc:
            print(f"JepaflowError: {exc}", file=sys.stderr)
            return exc.exit_code
        print(RESULT_TAG + json.dumps(result), flush=True)
        return 0

    command = "python " + shlex.join(sys.argv if argv is None else [sys.argv[0], *argv])
    try:  # validate every recipe and override before running anything
        for path in args.recipes:
            load(path, args.set, args.batch_size)
    except JepaflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    rows = []
    for path in args.recipes:
        print(f"[{'loader' if args.loader else 'step'}] {path} ...", file=sys.stderr, flush=True)
        if not args.no_isolate:
            rows.append(run_isolated(args, path))
            continue
        try:
            rows.append(run_one(args, path))
        except Exception as exc:  # one failing recipe (e.g. out of memory) must not lose the others' rows
            rows.append({"recipe": path, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"})
    text = report(args, rows, command)
    emit(text, args.out, args.append)
    if args.out:
        print(f"written to {args.out}", file=sys.stderr)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
