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

from jepaflow.config import Recipe
from jepaflow.engine import checkpoint as ckpt_io
from jepaflow.engine import faults
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
from jepaflow.engine.loggers import open_loggers
from jepaflow.engine.logging import Progress, environment, plot_curves, plugin_provenance
from jepaflow.engine.monitor import TrainingMonitor, knn_due, monitor_due
from jepaflow.engine.optim import build_optimizer, set_hyperparams
from jepaflow.errors import DataError, JepaflowError
from jepaflow.outputs import check_output_dir
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
    info = init_distributed(recipe.train.device, recipe.train.dist_timeout_s)
    run_dir = Path(output_dir if output_dir is not None else recipe.output_dir)
    try:
        return _train(recipe, run_dir, resume, info)
    except RuntimeError as exc:  # a dead loader worker, a lost or hung process: one message, not a traceback
        failure = faults.runtime_failure(exc, recipe.train.num_workers, info.rank, info.world_size,
                                         run_dir / "checkpoints" / "last.pt")
        if failure is None:
            raise
        raise failure from None
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

    # ---- refuse anything that could overwrite a checkpoint or fail to be written, before building anything
    check_output_dir(run_dir)
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
        step = ckpt_io.restore(saved, objective, optimizer, last_ckpt, total_steps)
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
        metrics = open_loggers(t_cfg.loggers, run_dir, resume_step=step if resume else None, config=recipe.to_dict())
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
        # The weights themselves, not only the loss: one step at a huge learning rate makes them inf while the
        # loss it was computed from is finite. One fused reduction on the device; bool() below is the one sync.
        nonfinite = nonfinite | (ckpt_io.nonfinite_weights(objective) > 0)
        # Every rank must agree: one rank's NaN has already reached every replica through the gradient all-reduce.
        if world > 1:
            flag = nonfinite.float().reshape(1)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            nonfinite = flag[0] > 0
        if bool(nonfinite):
            raise faults.diverged(at_step, last_ckpt)
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
            try:
                with faults.raise_on_stop_signals():
                    summary["probe"] = run_probe(recipe, objective.representation_encoder(), info.device)
            except faults.StopSignal as sig:  # training is complete and checkpointed: say so, keep the summary
                summary["probe"] = {"skipped": f"stopped by {sig.name} during the probe"}
                summary["exit_code"] = sig.exit_code
                print(f"jepaflow: stopped by {sig.name} during the end-of-run probe; training is complete and its "
                      f"checkpoint is {last_ckpt}", flush=True)
            (run_dir / "probe.json").write_text(json.dumps(summary["probe"], indent=2))
            pr = summary["probe"]
            print("jepaflow: probe accuracy " + ", ".join(
                f"{k} {pr[k] * 100:.2f}%" + (f" (random init: {pr[k + '_random_init'] * 100:.2f}%)"
                                              if k + "_random_init" in pr else "")
                for k in recipe.probe.kinds if k in pr), flush=True)
    if info.is_main:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def run_probe(recipe: Recipe, encoder: torch.nn.Module, device: torch.device) -> dict[str, Any]:
    """Frozen-feature probes of ``encoder`` on the recipe's data set (train split fits, test split scores)."""
    from jepaflow.probes.features import run_probes

    train_ds = build_dataset(recipe, "train", augment=False)
    test_ds = build_dataset(recipe, "test", augment=False)
    if getattr(train_ds, "num_classes", None) is None:
        return {"skipped": "the data set has no labels"}
    t0 = time.perf_counter()
    result = run_probes(encoder, train_ds, test_ds, recipe.probe, device)
    out = {k: float(v) for k, v in result.items()}
    if recipe.probe.random_init_baseline:
        # The same architecture at the run's initialization (same seed): what the probe gets for free.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(recipe.seed)
            fresh = build_objective(recipe).representation_encoder().to(device)
        base = run_probes(fresh, train_ds, test_ds, recipe.probe, device)
        out.update({f"{k}_random_init": float(v) for k, v in base.items()})
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


__all__ = ["train", "run_probe"]
