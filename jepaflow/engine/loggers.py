"""Metric sinks beside ``metrics.jsonl``, chosen by ``train.loggers`` (default ``[jsonl]``).

* ``jsonl``: :class:`jepaflow.engine.logging.MetricsWriter`, always on (curves.png, the summary and resume read it).
* ``tensorboard``: every numeric field of a log record as a scalar ``train/<name>`` at its step, through
  ``torch.utils.tensorboard.SummaryWriter`` into ``<run>/tensorboard/`` (``tensorboard --logdir <run>``). On
  resume, events past the resumed step are purged, as metrics.jsonl drops its lines past it.
* ``wandb``: Weights & Biases, **offline** unless the user set ``WANDB_MODE`` (``wandb sync <run>/wandb/...``
  uploads later); one W&B run per run folder (its id kept in ``<run>/wandb-id``, so ``--resume`` continues it),
  the resolved recipe as its config.

Rank 0 writes, at log steps only: the values are already host floats, so no sink adds a device sync. Whether
``tensorboard``/``wandb`` are installed is checked when the recipe is validated (``TrainConfig.loggers``).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from jepaflow.engine.logging import MetricsWriter


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The numeric fields of a log record other than ``step`` (booleans and strings left out)."""
    return {k: float(v) for k, v in record.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


class TensorBoardLogger:
    """Scalars ``train/<name>`` at ``global_step = record["step"]`` (``torch.utils.tensorboard``)."""

    def __init__(self, log_dir: Path, resume_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: TensorBoard hides the previous run's events at steps >= it (they were redone after resume)
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=None if resume_step is None else resume_step + 1)

    def write(self, record: dict[str, Any]) -> None:
        step = int(record["step"])
        for name, value in scalars(record).items():
            self.writer.add_scalar(f"train/{name}", value, step)

    def close(self) -> None:
        self.writer.close()


class WandbLogger:
    """One offline (unless ``WANDB_MODE`` says otherwise) Weights & Biases run per run folder."""

    def __init__(self, run_dir: Path, config: dict[str, Any], resume: bool):
        import wandb

        id_file = run_dir / "wandb-id"
        if resume and id_file.exists():
            run_id = id_file.read_text().strip()
        else:
            run_id = uuid.uuid4().hex[:12]
            id_file.write_text(run_id + "\n")
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "jepaflow"),
            name=run_dir.name,
            id=run_id,
            resume="allow",
            dir=str(run_dir),
            config=config,
            mode=os.environ.get("WANDB_MODE", "offline"),  # nothing leaves the machine unless asked
        )

    def write(self, record: dict[str, Any]) -> None:
        self.run.log(scalars(record), step=int(record["step"]))

    def close(self) -> None:
        self.run.finish()


class Loggers:
    """The sinks of ``train.loggers`` behind one ``write(record)`` / ``close()``."""

    def __init__(self, sinks: list[Any]):
        self.sinks = sinks

    def write(self, record: dict[str, Any]) -> None:
        for sink in self.sinks:
            sink.write(record)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


def open_loggers(names: tuple[str, ...] | list[str], run_dir: Path, resume_step: int | None,
                 config: dict[str, Any] | None = None) -> Loggers:
    """Open the sinks named by ``train.loggers`` (``jsonl`` first) for a run folder; ``resume_step`` is the step a
    resumed run continues from (None for a new run); ``config`` the resolved recipe (for W&B)."""
    sinks: list[Any] = [MetricsWriter(run_dir / "metrics.jsonl", resume_step=resume_step)]
    if "tensorboard" in names:
        sinks.append(TensorBoardLogger(run_dir / "tensorboard", resume_step=resume_step))
    if "wandb" in names:
        sinks.append(WandbLogger(run_dir, config or {}, resume=resume_step is not None))
    return Loggers(sinks)


__all__ = ["Loggers", "TensorBoardLogger", "WandbLogger", "open_loggers", "scalars"]
