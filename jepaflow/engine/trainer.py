"""The training loop. It knows the interfaces (Objective, Masker, TargetUpdater, Dataset), never a method.

One optimizer step::

    lr, wd = schedules(step)                      pure functions of the step: nothing to restore on resume
    for each of accum_steps micro-batches:        (DDP syncs gradients on the last one only)
        loss = objective(batch) / accum_steps     bf16 autocast on CUDA, fp32 on CPU
        loss.backward()
    clip (optional); optimizer.step()
    target_updater.update(objective.target_pairs(), step)

Metrics stay on the device and are read every ``train.log_every`` steps: the only host syncs of the loop. A
NaN/inf loss is detected there (and before every checkpoint), so no checkpoint is ever written from diverged
weights. SIGTERM/SIGINT set a flag; the loop stops at the next step boundary (all ranks agree at the next log
step), writes a checkpoint and returns, and ``--resume`` continues from it exactly.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from jepaflow.config import Recipe
from jepaflow.engine import checkpoint as ckpt_io
from jepaflow.engine.build import build_dataset, build_masker, build_objective, build_target_updater
from jepaflow.engine.data import MaskingCollator, StepBatchSampler, epoch_loader, mix_seed
from jepaflow.engine.distributed import (
    DistInfo,
    all_reduce_mean_,
    any_rank,
    barrier,
    cleanup,
    init_distributed,
)
from jepaflow.engine.logging import MetricsWriter, Progress, environment, plot_curves, plugin_provenance
from jepaflow.engine.monitor import TrainingMonitor, knn_due, monitor_due
from jepaflow.engine.optim import build_optimizer, set_hyperparams
from jepaflow.errors import DataError, JepaflowError, TrainingDiverged
from jepaflow.schedules import lr_at, weight_decay_at

#: recipe sections that may change between a run and its resumption (they do not change the trajectory).
RESUMABLE_CHANGES = ("train", "probe", "output_dir")


class _StopFlag:
    """Set by SIGTERM/SIGINT; checked by the loop between steps."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. some notebook runners): no signal handling
                pass

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C means "now"
        self.signum = signum

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _check_resumable(saved: dict[str, Any], recipe: Recipe) -> None:
    now = recipe.to_dict()
    changed = sorted(k for k in set(saved) | set(now) if k not in RESUMABLE_CHANGES and saved.get(k) != now.get(k))
    # The global batch sets the steps per epoch, hence where a saved step falls in the data order and schedules.
    if saved.get("train", {}).get("batch_size") != now["train"]["batch_size"]:
        changed.append("train.batch_size")
    if changed:
        raise JepaflowError(
            f"the recipe differs from the one the run was started with, in: {', '.join(changed)}",
            "resume with the original recipe (the run folder keeps it as recipe.yaml); only train.* (except "
            "train.batch_size) and probe.* may change on resume",
        )


def train(recipe: Recipe, output_dir: str | Path | None = None, resume: bool = False) -> dict[str, Any]:
    """Pretrain according to ``recipe``; returns a summary (also written to ``summary.json``)."""
    info = init_distributed(recipe.train.device)
    try:
        return _train(recipe, Path(output_dir or recipe.output_dir), resume, info)
    finally:
        cleanup()


def autocast_for(recipe: Recipe, device: torch.device):
    prec = recipe.train.precision
    if prec == "bf16" or (prec == "auto" and device.type == "cuda"):
        # bf16 has fp32's exponent range: no loss scaling (GradScaler) is needed.
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def optimizer_step(recipe: Recipe, model: torch.nn.Module, objective: torch.nn.Module,
                   optimizer: torch.optim.Optimizer, updater, micro_batches: list, *, step: int, warmup: int,
                   sched_total: int, win_sums: dict[str, torch.Tensor], nonfinite: torch.Tensor,
                   params: list[torch.nn.Parameter]) -> tuple[float, float, dict[str, float]]:
    """One optimizer step over ``micro_batches`` (already on the device): schedules, forward/backward per
    micro-batch (DDP syncs gradients on the last one only), optional clipping, optimizer, target update.

    Metrics are added to ``win_sums`` and non-finite losses/gradient norms flagged in ``nonfinite``, both on the
    device: nothing here waits for the host. Also timed by ``benchmarks/train_throughput.py``.
    Returns ``(lr, wd, target-updater scalars)``.
    """
    o_cfg = recipe.optim
    accum = len(micro_batches)
    lr = lr_at(step, warmup, sched_total, o_cfg.start_lr, o_cfg.lr, o_cfg.final_lr)
    wd = weight_decay_at(step, sched_total, o_cfg.weight_decay, o_cfg.final_weight_decay)
    set_hyperparams(optimizer, lr, wd)
    objective.train()
    ddp = isinstance(model, torch.nn.parallel.DistributedDataParallel)
    for j, batch in enumerate(micro_batches):
        sync_ctx = model.no_sync() if ddp and j < accum - 1 else contextlib.nullcontext()
        with sync_ctx:
            with autocast_for(recipe, batch.images.device):
                out = model(batch)
            (out.loss / accum).backward()
        loss_d = out.loss.detach().float()
        nonfinite |= ~torch.isfinite(loss_d)
        for k, v in {"loss": loss_d, **out.metrics}.items():
            v = v.detach().float() / accum
            win_sums[k] = win_sums[k] + v if k in win_sums else v
    if o_cfg.grad_clip is not None:
        gn = torch.nn.utils.clip_grad_norm_(params, o_cfg.grad_clip).detach().float()
        nonfinite |= ~torch.isfinite(gn)  # a finite loss can still have an infinite gradient
        win_sums["grad_norm"] = win_sums["grad_norm"] + gn if "grad_norm" in win_sums else gn
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    scalars = updater.update(objective.target_pairs(), step, sched_total) if updater is not None else {}
    return lr, wd, scalars


def _train(recipe: Recipe, run_dir: Path, resume: bool, info: DistInfo) -> dict[str, Any]:
    t_cfg, o_cfg = recipe.train, recipe.optim
    last_ckpt = run_dir / "checkpoints" / "last.pt"

    # ---- refuse anything that could overwrite a checkpoint, before building anything
    saved = None
    if resume:
        if not last_ckpt.exists():
            raise JepaflowError(f"nothing to resume: {last_ckpt} does not exist", "drop --resume to start a new run")
        saved = ckpt_io.load_checkpoint(last_ckpt)
        _check_resumable(saved["recipe"], recipe)
    elif last_ckpt.exists():
        raise JepaflowError(
            f"{run_dir} already holds a run (checkpoints/last.pt)",
            "pass --resume to continue it, or --output to start a new run elsewhere",
        )

    # ---- data
    dataset = build_dataset(recipe, "train", augment=True)
    world, accum, G = info.world_size, o_cfg.accum_steps, t_cfg.batch_size
    if G % (world * accum) != 0:
        raise JepaflowError(
            f"train.batch_size {G} is not divisible by world size x accum_steps ({world} x {accum})",
            "choose a global batch that splits evenly over the processes and micro-batches",
        )
    steps_per_epoch = len(dataset) // G
    if steps_per_epoch == 0:
        raise DataError(f"the data set has {len(dataset)} images, fewer than one global batch ({G})",
                        "lower train.batch_size or use more data")
    total_steps = o_cfg.epochs * steps_per_epoch
    run_steps = min(total_steps, t_cfg.max_steps or total_steps)
    sched_total = int(o_cfg.ipe_scale * o_cfg.epochs * steps_per_epoch)
    warmup = int(o_cfg.warmup_epochs * steps_per_epoch)

    # ---- model, optimizer (same seed on every rank, so every replica starts identical)
    torch.manual_seed(recipe.seed)
    objective = build_objective(recipe).to(info.device)
    if world > 1 and info.device.type == "cuda":
        # Global BatchNorm statistics across processes (SimCLR sec. 2.2; the VICReg and BYOL code use
        # SyncBatchNorm). A no-op for models without BatchNorm, such as the ViTs. Not available on CPU.
        objective = torch.nn.SyncBatchNorm.convert_sync_batchnorm(objective)
    masker = build_masker(recipe)
    updater = build_target_updater(recipe)
    grid = objective.representation_encoder().grid_size
    if masker is not None:
        # Masker.check, then the masks of this rank's first micro-batch (same seed as the collator's) checked
        # against the masker contract: a broken masker is named here, not inside step 0 (jepaflow.testing).
        from jepaflow.testing import check_masker

        first = int(saved["step"]) if saved is not None else 0
        gen = torch.Generator().manual_seed(mix_seed(recipe.seed, 2, first, info.rank * accum))
        check_masker(masker, grid, G // (world * accum), gen, name=recipe.components["masker"].name)
    optimizer = build_optimizer(objective, o_cfg)
    params = [p for p in objective.parameters() if p.requires_grad]

    step = 0
    if saved is not None:
        objective.load_state_dict(saved["objective"])
        optimizer.load_state_dict(saved["optimizer"])
        ckpt_io.set_rng_state(saved["rng"])
        step = int(saved["step"])
    model: torch.nn.Module = objective
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            objective, device_ids=[info.local_rank] if info.device.type == "cuda" else None,
            broadcast_buffers=False,  # buffers are fixed tables (sin-cos) or per-replica statistics
        )

    # ---- run folder (rank 0 writes, the others only read)
    metrics = None
    if info.is_main:
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        (run_dir / "recipe.yaml").write_text(recipe.to_yaml())
        env = environment(world, info.device) | {"steps_per_epoch": steps_per_epoch, "total_steps": total_steps,
                                                 "plugins": plugin_provenance(recipe)}
        (run_dir / "env.json").write_text(json.dumps(env, indent=2))
        metrics = MetricsWriter(run_dir / "metrics.jsonl", resume_step=step if resume else None)
        print(f"jepaflow: {len(dataset)} images, {steps_per_epoch} steps/epoch, {run_steps - step} steps to run "
              f"(from step {step}) on {world} x {info.device.type}; run folder {run_dir}", flush=True)
    monitor = None  # label-free monitors on a fixed batch, rank 0 only (engine/monitor.py)
    if info.is_main and (t_cfg.monitor_every is not None or t_cfg.monitor_knn_every_epochs is not None):
        monitor = TrainingMonitor(recipe, objective.representation_encoder(), info.device,
                                  lambda: autocast_for(recipe, info.device))
        if monitor.note:
            print(f"jepaflow: {monitor.note}", flush=True)
    barrier(info)

    def save(at_step: int, nonfinite: torch.Tensor) -> None:
        # Every rank must agree: one rank's NaN has already reached every replica through the gradient all-reduce.
        if world > 1:
            flag = nonfinite.float().reshape(1)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            nonfinite = flag[0] > 0
        if bool(nonfinite):
            raise TrainingDiverged(
                f"the loss became NaN or infinite before step {at_step}; the last good checkpoint is kept at "
                f"{last_ckpt}",
                "lower optim.lr, enable optim.grad_clip, or check the data; then --resume or restart",
            )
        if info.is_main:
            state = {
                "format": ckpt_io.FORMAT, "version": ckpt_io.VERSION, "recipe": recipe.to_dict(),
                "objective": objective.state_dict(), "optimizer": optimizer.state_dict(),
                "step": at_step, "epoch": at_step // steps_per_epoch, "rng": ckpt_io.rng_state(),
            }
            ckpt_io.save_atomic(state, last_ckpt)
            epoch_done = at_step % steps_per_epoch == 0
            if t_cfg.keep_epoch_checkpoints and epoch_done:
                shutil.copyfile(last_ckpt, run_dir / "checkpoints" / f"epoch_{at_step // steps_per_epoch:04d}.pt")
        barrier(info)

    stop = _StopFlag()
    stop.install()
    progress = Progress(run_steps, step, t_cfg.progress and info.is_main)
    dev = info.device
    nonfinite = torch.zeros((), dtype=torch.bool, device=dev)
    win_sums: dict[str, torch.Tensor] = {}
    win_steps, win_t0 = 0, time.perf_counter()
    last_record: dict[str, Any] = {}
    extra_scalars: dict[str, float] = {}
    stopped_by: str | None = None
    skipped_images = 0
    pin = t_cfg.pin_memory and dev.type == "cuda"
    try:
        while step < run_steps and stopped_by is None:
            epoch, start = divmod(step, steps_per_epoch)
            sampler = StepBatchSampler(len(dataset), seed=recipe.seed, epoch=epoch, steps_per_epoch=steps_per_epoch,
                                       global_batch=G, world_size=world, rank=info.rank, accum_steps=accum,
                                       start=start)
            collator = MaskingCollator(masker, grid, recipe.seed)
            batches = iter(epoch_loader(dataset, collator, sampler, seed=recipe.seed, epoch=epoch,
                                        num_workers=t_cfg.num_workers, pin_memory=pin))
            for _ in range(start, steps_per_epoch):
                if step >= run_steps:
                    break
                micro = [next(batches).to(dev, non_blocking=True) for _ in range(accum)]
                skipped_images += sum(b.extras.get("skipped_images", 0) for b in micro)
                lr, wd, upd = optimizer_step(recipe, model, objective, optimizer, updater, micro, step=step,
                                             warmup=warmup, sched_total=sched_total, win_sums=win_sums,
                                             nonfinite=nonfinite, params=params)
                extra_scalars = upd or extra_scalars
                step += 1
                win_steps += 1
                progress.advance()

                if world == 1 and stop.signum is not None:
                    stopped_by = signal.Signals(stop.signum).name
                knn_now = knn_due(step, recipe, steps_per_epoch)
                monitor_now = monitor_due(step, recipe, run_steps) or knn_now  # also a log step, on every rank
                at_log = step % t_cfg.log_every == 0 or step == run_steps or stopped_by is not None or monitor_now
                if at_log:
                    if world > 1 and any_rank(stop.signum is not None, info):
                        stopped_by = signal.Signals(stop.signum).name if stop.signum else "SIGTERM (another rank)"
                    keys = sorted(win_sums)
                    vec = torch.stack([win_sums[k] for k in keys] + [nonfinite.float()])
                    all_reduce_mean_(vec, info)
                    vals = vec.tolist()  # the host sync of this window
                    if vals[-1] > 0:
                        nonfinite.fill_(True)
                        save(step, nonfinite)  # raises TrainingDiverged, keeps the last good checkpoint
                    dt = time.perf_counter() - win_t0
                    record = {"step": step, "epoch": step / steps_per_epoch, "lr": lr, "wd": wd, **extra_scalars}
                    record.update({k: v / win_steps for k, v in zip(keys, vals[:-1])})
                    record["img_per_s"] = win_steps * G / dt
                    if skipped_images:
                        record["skipped_images"] = skipped_images
                    record["eta_s"] = (run_steps - step) * dt / win_steps
                    if monitor is not None and monitor_now:  # after dt: img/s leaves the monitor's time out
                        record.update(monitor(knn=knn_now))
                    if metrics is not None:
                        metrics.write(record)
                    progress.report(record)
                    last_record = record
                    win_sums, win_steps, win_t0 = {}, 0, time.perf_counter()

                epoch_end = step % steps_per_epoch == 0
                due = (
                    (t_cfg.checkpoint_every_steps is not None and step % t_cfg.checkpoint_every_steps == 0)
                    or (epoch_end and (step // steps_per_epoch) % t_cfg.checkpoint_every_epochs == 0)
                    or step == run_steps
                    or stopped_by is not None
                )
                if due:
                    save(step, nonfinite)
                if stopped_by is not None:
                    break
    finally:
        progress.close()
        stop.restore()
        if metrics is not None:
            metrics.close()

    summary: dict[str, Any] = {
        "run_dir": str(run_dir), "step": step, "total_steps": total_steps, "finished": step >= total_steps,
        "stopped_by": stopped_by, "last": last_record, "skipped_images": skipped_images,
    }
    if stopped_by is not None:
        summary["exit_code"] = 130 if stopped_by == "SIGINT" else 143
        if info.is_main:
            print(f"jepaflow: stopped by {stopped_by} at step {step}; checkpoint written to {last_ckpt}. "
                  f"Continue with: jepaflow run <recipe> --output {run_dir} --resume", flush=True)
    elif info.is_main:
        plot = plot_curves(run_dir / "metrics.jsonl", run_dir / "curves.png")
        summary["plot"] = str(plot) if plot else None
        if recipe.probe.enabled:
            summary["probe"] = run_probe(recipe, objective, info.device, run_dir, step)
    if info.is_main:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def run_probe(recipe: Recipe, objective: torch.nn.Module, device: torch.device, run_dir: str | Path | None = None,
              step: int | None = None) -> dict[str, Any]:
    """The end-of-run probe (``recipe.probe``): :func:`jepaflow.probes.evaluate.probe_encoder`, the code that
    ``jepaflow probe RUN_DIR`` runs, so both give the same numbers. Writes ``probe.json`` into ``run_dir``;
    returns the headline accuracies (for summary.json), or why the probe was skipped."""
    from jepaflow.probes.cache import FeatureCache, cache_root
    from jepaflow.probes.data import build_probe_data, resolve_data_section
    from jepaflow.probes.evaluate import accuracies, probe_encoder, summary_line, write_probe_json
    from jepaflow.probes.sources import build_run_objective, pick_encoder

    cfg = recipe.probe
    data = build_probe_data(resolve_data_section(recipe.to_dict()["data"]), require_labels=False)
    if data.num_classes is None:
        return {"skipped": "the data set has no labels"}
    encoder, role = pick_encoder(objective, cfg.encoder, "the run")
    baseline = None
    if cfg.random_init_baseline:  # the same architecture at the run's initialization: what the probe gets for free
        baseline = pick_encoder(build_run_objective(recipe.to_dict(), None, "the run"), cfg.encoder, "the run")[0]
        baseline = baseline.to(device).eval().requires_grad_(False)
    source = {"kind": "run", "spec": None if run_dir is None else str(run_dir), "role": role, "step": step,
              "path": None if run_dir is None else str(Path(run_dir) / "checkpoints" / "last.pt"),
              "objective": recipe.components["objective"].name, "run_dir": None if run_dir is None else str(run_dir)}
    doc = probe_encoder(encoder, data, cfg, source=source, device=device, cache=FeatureCache(cache_root()),
                        baseline=baseline, log=lambda msg: print(f"jepaflow: probe {msg}", flush=True))
    if run_dir is not None:
        write_probe_json(doc, Path(run_dir) / "probe.json")
    print(f"jepaflow: probe accuracy {summary_line(doc)}", flush=True)
    return {**accuracies(doc), "seconds": doc["seconds"]["total"]}


def load_run_recipe(run_dir: str | Path) -> dict[str, Any]:
    """The resolved recipe a run was started with (its recipe.yaml)."""
    return yaml.safe_load((Path(run_dir) / "recipe.yaml").read_text())


__all__ = ["train", "run_probe", "load_run_recipe"]
