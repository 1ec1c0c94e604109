"""The training loop. It knows the interfaces (Objective, Masker, TargetUpdater, Dataset), never a method.

:class:`TrainStep` is one optimizer step and the state it carries between steps (optimizer, target updater,
schedules, on-device metric sums); :func:`train` is the loop around it: data, checkpoints, logging, signals.

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

from jepaflow.checkpoints import nonfinite_count
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
from jepaflow.engine.kernels import use_onednn_linear
from jepaflow.engine.loggers import open_loggers
from jepaflow.engine.logging import Progress, environment, plot_curves, plugin_provenance
from jepaflow.engine.monitor import TrainingMonitor, knn_due, monitor_due
from jepaflow.engine.optim import build_optimizer, set_hyperparams, set_implementation
from jepaflow.errors import DataError, JepaflowError
from jepaflow.interfaces import Batch, Encoder, Objective, Predictor
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


class TrainStep:
    """One optimizer step and the state it carries from one step to the next.

    The loop of :func:`train` and ``benchmarks/train_step.py`` both call :meth:`step`, so what is timed is what
    trains::

        lr, wd = schedules(done)                    pure functions of the step count: nothing to restore
        for each micro-batch:                       (DDP/FSDP sync gradients on the last one only)
            loss = model(batch) / accum             under autocast_for(recipe)
            loss.backward()
        clip (optional); optimizer.step(); zero_grad
        target_updater.update(objective.target_pairs(), done)
        done += 1

    ``model`` is the objective, wrapped for several processes (``DistributedDataParallel``, or sharded in place
    by ``fully_shard`` with ``train.fsdp``) and compiled with ``train.compile``; on CPU its linear layers run on
    oneDNN (``train.onednn_linear``, engine/kernels.py). Metrics are summed on the device
    (``win_sums``) and a NaN/inf loss or gradient norm sets ``nonfinite``; nothing in :meth:`step` waits for the
    host. :meth:`read_window` is the one host sync, every ``log_every``.
    """

    def __init__(self, recipe: Recipe, objective: Objective, device: torch.device, *, steps_per_epoch: int,
                 world_size: int = 1, local_rank: int = 0):
        o_cfg, t_cfg = recipe.optim, recipe.train
        self.recipe, self.objective, self.device = recipe, objective, device
        if t_cfg.grad_checkpointing:
            _enable_grad_checkpointing(objective)
        if t_cfg.onednn_linear and device.type == "cpu" and not t_cfg.compile:
            use_onednn_linear(objective)  # fp32 CPU linear layers on oneDNN's GEMM (engine/kernels.py)
        self.model: torch.nn.Module = objective  # what the forward goes through
        self.fsdp = t_cfg.fsdp and world_size > 1
        if self.fsdp:
            _fully_shard(objective, device, world_size)  # in place: parameters become shards (DTensors)
        elif world_size > 1:
            self.model = torch.nn.parallel.DistributedDataParallel(
                objective, device_ids=[local_rank] if device.type == "cuda" else None,
                broadcast_buffers=False,  # buffers are fixed tables (sin-cos) or per-replica statistics
            )
        if t_cfg.compile:
            # dynamic: the masks change the context and target lengths every batch (one graph, not one per shape)
            self.model = torch.compile(self.model, dynamic=True)
        # after sharding: the optimizer holds the parameters as they will be updated
        self.optimizer = build_optimizer(objective, o_cfg, fused=t_cfg.fused_optimizer)
        self.updater = build_target_updater(recipe)
        self.params = [p for p in objective.parameters() if p.requires_grad]
        # schedules, in optimizer steps (the reference converts epochs with its loader's length too)
        self.warmup = int(o_cfg.warmup_epochs * steps_per_epoch)
        self.sched_total = int(o_cfg.ipe_scale * o_cfg.epochs * steps_per_epoch)
        self.done = 0  # optimizer steps taken
        self.lr = self.wd = 0.0  # of the last step
        self.scalars: dict[str, float] = {}  # the target updater's, of the last step that returned any
        self.win_sums: dict[str, torch.Tensor] = {}
        self.win_steps = 0
        self.nonfinite = torch.zeros((), dtype=torch.bool, device=device)

    def state_dict(self) -> dict[str, Any]:
        """Objective and optimizer state in the plain single-process format (also under FSDP, where it is a
        collective: every rank must call it; rank 0 gets the full tensors on the CPU, the others empty dicts)."""
        if self.fsdp:
            return {**_gather_full_state(self.objective, self.optimizer), "step": self.done}
        return {"objective": self.objective.state_dict(), "optimizer": self.optimizer.state_dict(),
                "step": self.done}

    def load_state_dict(self, saved: dict[str, Any], path: Path, total_steps: int) -> None:
        """Continue from a training checkpoint read from ``path``: weights, optimizer state, RNG and step, each
        checked (engine/checkpoint.py ``restore``); under FSDP loaded into the shards."""
        load = (lambda sd: _load_full_state(self.objective, self.optimizer, sd)) if self.fsdp else None
        self.done = ckpt_io.restore(saved, self.objective, self.optimizer, path, total_steps, load=load)
        set_implementation(self.optimizer, self.recipe.train.fused_optimizer)

    def nonfinite_weights(self) -> torch.Tensor:
        """How many parameter/buffer tensors hold NaN or inf (this rank's shards under FSDP): a 0-d device
        tensor, no host sync."""
        tensors = [*self.objective.parameters(), *self.objective.buffers()]
        if self.fsdp:
            tensors = [t.to_local() if hasattr(t, "to_local") else t for t in tensors]
        return nonfinite_count(tensors)

    def representation_encoder(self) -> torch.nn.Module | None:
        """The encoder the probes evaluate. Under FSDP (a collective: every rank must call it) an unsharded copy
        on rank 0, None on the other ranks."""
        if not self.fsdp:
            return self.objective.representation_encoder()
        weights = self.state_dict()["objective"]
        if not weights:
            return None
        with torch.random.fork_rng(devices=[]):
            copy = build_objective(self.recipe)
        copy.load_state_dict(weights)
        return copy.representation_encoder().to(self.device)

    def _grad_sync(self, last: bool):
        """DDP/FSDP: reduce gradients only after the last micro-batch of the step."""
        if self.fsdp:
            self.objective.set_requires_gradient_sync(last)
        elif isinstance(self.model, torch.nn.parallel.DistributedDataParallel) and not last:
            return self.model.no_sync()
        return contextlib.nullcontext()

    def step(self, micro_batches: list[Batch]) -> None:
        """One optimizer step over ``micro_batches`` (already on the device)."""
        o_cfg, accum = self.recipe.optim, len(micro_batches)
        self.lr = lr_at(self.done, self.warmup, self.sched_total, o_cfg.start_lr, o_cfg.lr, o_cfg.final_lr)
        self.wd = weight_decay_at(self.done, self.sched_total, o_cfg.weight_decay, o_cfg.final_weight_decay)
        set_hyperparams(self.optimizer, self.lr, self.wd)
        self.objective.train()
        sums = self.win_sums
        for j, batch in enumerate(micro_batches):
            with self._grad_sync(last=j == accum - 1):
                with autocast_for(self.recipe, self.device):
                    out = self.model(batch)
                (out.loss / accum).backward()
            loss = out.loss.detach().float()
            self.nonfinite |= ~torch.isfinite(loss)
            for k, v in {"loss": loss, **out.metrics}.items():
                v = v.detach().float() / accum
                sums[k] = sums[k] + v if k in sums else v
        if o_cfg.grad_clip is not None:
            gn = torch.nn.utils.clip_grad_norm_(self.params, o_cfg.grad_clip).detach().float()
            gn = gn.full_tensor() if hasattr(gn, "full_tensor") else gn  # FSDP (a DTensor): over every shard
            self.nonfinite |= ~torch.isfinite(gn)  # a finite loss can still have an infinite gradient
            sums["grad_norm"] = sums["grad_norm"] + gn if "grad_norm" in sums else gn
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.updater is not None:
            scalars = self.updater.update(self.objective.target_pairs(), self.done, self.sched_total)
            self.scalars = scalars or self.scalars
        self.done += 1
        self.win_steps += 1

    def read_window(self, info: DistInfo) -> tuple[dict[str, float], int]:
        """The metrics averaged over the steps since the last call and over ranks, and how many steps that was;
        starts a new window. Sets ``nonfinite`` on every rank if any rank saw a NaN/inf. The host sync."""
        keys = sorted(self.win_sums)
        vec = torch.stack([self.win_sums[k] for k in keys] + [self.nonfinite.float()])
        all_reduce_mean_(vec, info)
        vals = vec.tolist()
        if vals[-1] > 0:
            self.nonfinite.fill_(True)
        steps = self.win_steps
        means = {k: v / steps for k, v in zip(keys, vals[:-1])}
        self.win_sums, self.win_steps = {}, 0
        return means, steps


def _enable_grad_checkpointing(objective: Objective) -> None:
    """``train.grad_checkpointing``: ask every encoder and predictor of the objective to recompute its blocks."""
    for module in objective.modules():
        if isinstance(module, (Encoder, Predictor)):
            try:
                module.set_grad_checkpointing(True)
            except TypeError as exc:
                raise JepaflowError(str(exc), "set train.grad_checkpointing=false for this model") from None


def _fully_shard(objective: Objective, device: torch.device, world_size: int) -> None:
    """``train.fsdp``: shard the objective over all ranks with torch's FSDP2 (``fully_shard``).

    The units are the elements of every ``nn.ModuleList`` (a model's repeated blocks: whatever the method, its
    transformer blocks are what holds the parameters), then the objective itself for the rest (embeddings,
    norms, heads). Each unit's parameters are gathered for its forward and backward and freed after; gradients
    are reduce-scattered, so each rank keeps and updates 1/world of the weights, gradients and AdamW state. The
    EMA target updater works on the shards as they are (online and target are sharded alike).
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (world_size,))
    for module in list(objective.modules()):
        if isinstance(module, torch.nn.ModuleList):
            for block in module:
                fully_shard(block, mesh=mesh)
    fully_shard(objective, mesh=mesh)


def _param_names(objective: Objective, optimizer: torch.optim.Optimizer) -> list[str]:
    """Names of the optimizer's parameters in the order of its param groups, i.e. of the integer keys of the
    plain ``Optimizer.state_dict()`` format."""
    names = {id(p): n for n, p in objective.named_parameters()}
    return [names[id(p)] for g in optimizer.param_groups for p in g["params"]]


def _gather_full_state(objective: Objective, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """FSDP: full objective and optimizer state on rank 0 (CPU), in the plain format (integer parameter keys)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    model_sd, optim_sd = get_state_dict(objective, optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not model_sd:  # ranks other than 0
        return {"objective": {}, "optimizer": {}}
    index = {n: i for i, n in enumerate(_param_names(objective, optimizer))}
    optim_sd = {"state": {index[n]: v for n, v in optim_sd["state"].items()},
                "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in optim_sd["param_groups"]]}
    return {"objective": model_sd, "optimizer": optim_sd}


def _load_full_state(objective: Objective, optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    """FSDP: load a plain checkpoint (every rank has read it) into the shards."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    names = _param_names(objective, optimizer)
    optim_sd = saved["optimizer"]
    optim_sd = {"state": {names[i]: v for i, v in optim_sd["state"].items()},
                "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in optim_sd["param_groups"]]}
    set_state_dict(objective, optimizer, model_state_dict=saved["objective"], optim_state_dict=optim_sd,
                   options=StateDictOptions(full_state_dict=True))


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

    # ---- model, optimizer (same seed on every rank, so every replica starts identical)
    torch.manual_seed(recipe.seed)
    objective = build_objective(recipe).to(info.device)
    if world > 1 and info.device.type == "cuda":
        # Global BatchNorm statistics across processes (SimCLR sec. 2.2; the VICReg and BYOL code use
        # SyncBatchNorm). A no-op for models without BatchNorm, such as the ViTs. Not available on CPU.
        objective = torch.nn.SyncBatchNorm.convert_sync_batchnorm(objective)
    masker = build_masker(recipe)
    grid = objective.representation_encoder().grid_size
    if masker is not None:
        # Masker.check, then the masks of this rank's first micro-batch (same seed as the collator's) checked
        # against the masker contract: a broken masker is named here, not inside step 0 (jepaflow.testing).
        from jepaflow.testing import check_masker

        first = int(saved["step"]) if saved is not None else 0
        gen = torch.Generator().manual_seed(mix_seed(recipe.seed, 2, first, info.rank * accum))
        check_masker(masker, grid, G // (world * accum), gen, name=recipe.components["masker"].name)
    trainer = TrainStep(recipe, objective, info.device, steps_per_epoch=steps_per_epoch, world_size=world,
                        local_rank=info.local_rank)
    if saved is not None:
        trainer.load_state_dict(saved, last_ckpt, total_steps)  # checked; restores the RNG too
    step = trainer.done

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
    monitors_on = t_cfg.monitor_every is not None or t_cfg.monitor_knn_every_epochs is not None
    if info.is_main and monitors_on and trainer.fsdp:
        print("jepaflow: the label-free monitors are off under train.fsdp (they need the whole encoder on rank 0)",
              flush=True)
    elif info.is_main and monitors_on:
        monitor = TrainingMonitor(recipe, objective.representation_encoder(), info.device,
                                  lambda: autocast_for(recipe, info.device))
        if monitor.note:
            print(f"jepaflow: {monitor.note}", flush=True)
    barrier(info)

    def save(at_step: int) -> None:
        # The weights themselves, not only the loss: one step at a huge learning rate makes them inf while the
        # loss it was computed from is finite. One fused reduction on the device; bool() below is the one sync.
        nonfinite = trainer.nonfinite | (trainer.nonfinite_weights() > 0)
        # Every rank must agree: one rank's NaN has already reached every replica through the gradient all-reduce.
        if world > 1:
            flag = nonfinite.float().reshape(1)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            nonfinite = flag[0] > 0
        if bool(nonfinite):
            raise faults.diverged(at_step, last_ckpt)
        weights = trainer.state_dict()  # every rank: a collective under FSDP
        if info.is_main:
            state = {
                "format": ckpt_io.FORMAT, "version": ckpt_io.VERSION, "recipe": recipe.to_dict(),
                **weights, "epoch": at_step // steps_per_epoch, "rng": ckpt_io.rng_state(),
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
    win_t0 = time.perf_counter()
    last_record: dict[str, Any] = {}
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
                trainer.step(micro)
                step = trainer.done
                progress.advance()

                if world == 1 and stop.signum is not None:
                    stopped_by = signal.Signals(stop.signum).name
                knn_now = knn_due(step, recipe, steps_per_epoch)
                monitor_now = monitor_due(step, recipe, run_steps) or knn_now  # also a log step, on every rank
                at_log = step % t_cfg.log_every == 0 or step == run_steps or stopped_by is not None or monitor_now
                if at_log:
                    if world > 1 and any_rank(stop.signum is not None, info):
                        stopped_by = signal.Signals(stop.signum).name if stop.signum else "SIGTERM (another rank)"
                    means, win_steps = trainer.read_window(info)  # the host sync of this window
                    if bool(trainer.nonfinite):
                        save(step)  # raises TrainingDiverged, keeps the last good checkpoint
                    dt = time.perf_counter() - win_t0
                    record = {"step": step, "epoch": step / steps_per_epoch, "lr": trainer.lr, "wd": trainer.wd,
                              **trainer.scalars, **means}
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
                    win_t0 = time.perf_counter()

                epoch_end = step % steps_per_epoch == 0
                due = (
                    (t_cfg.checkpoint_every_steps is not None and step % t_cfg.checkpoint_every_steps == 0)
                    or (epoch_end and (step // steps_per_epoch) % t_cfg.checkpoint_every_epochs == 0)
                    or step == run_steps
                    or stopped_by is not None
                )
                if due:
                    save(step)
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
    probed = trainer.representation_encoder() if stopped_by is None and recipe.probe.enabled else None  # all ranks
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
                    summary["probe"] = run_probe(recipe, probed, info.device)
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


__all__ = ["TrainStep", "autocast_for", "train", "run_probe"]
