"""Run-folder outputs: metrics JSONL, environment record, progress display and the final curves plot."""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch


class MetricsWriter:
    """Appends one JSON object per line to ``metrics.jsonl`` (rank 0 only). On resume, lines past the resumed
    step are dropped first, so the file always reads as one continuous run."""

    def __init__(self, path: Path, resume_step: int | None = None):
        self.path = path
        if resume_step is not None and path.exists():
            records, dropped = parse_metrics(path.read_text(errors="replace"))
            if dropped:  # a crash mid-write leaves a torn last line
                print(f"jepaflow: note: dropped {dropped} unreadable line(s) of {path} (a write cut short by the "
                      "interruption)", flush=True)
            kept = [r for r in records if isinstance(r.get("step", 0), (int, float)) and r.get("step", 0) <= resume_step]
            path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        self._f = open(path, "a", buffering=1)

    def write(self, record: dict[str, Any]) -> None:
        self._f.write(json.dumps(record) + "\n")

    def close(self) -> None:
        self._f.close()


def parse_metrics(text: str) -> tuple[list[dict[str, Any]], int]:
    """``(records, dropped)``: the JSON objects of a metrics.jsonl text, and how many lines were not one."""
    records, dropped = [], 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            dropped += 1
            continue
        if isinstance(record, dict):
            records.append(record)
        else:
            dropped += 1
    return records, dropped


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl file; lines that are not JSON objects (a torn last line) are skipped."""
    return parse_metrics(Path(path).read_text(errors="replace"))[0]


def _git_commit() -> str | None:
    for cwd in (Path.cwd(), Path(__file__).resolve().parents[2]):
        try:
            out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
            if out.returncode == 0:
                return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return None


def environment(world_size: int, device: torch.device) -> dict[str, Any]:
    import jepaflow

    env: dict[str, Any] = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": socket.gethostname(),
        "command": sys.argv,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "jepaflow": jepaflow.__version__,
        "torch": torch.__version__,
        "git_commit": _git_commit(),
        "world_size": world_size,
        "device": str(device),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    try:
        import timm

        env["timm"] = timm.__version__
    except ImportError:
        pass
    if device.type == "cuda":
        env["cuda"] = torch.version.cuda
        env["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return env


def plugin_provenance(recipe: Any) -> dict[str, dict[str, str]]:
    """For each plugin section of the recipe: the plugin's kind and name, the class used (``module:Class``), and
    the distribution that registered the name with its version, so that a result can be traced to the exact
    third-party code (``env.json``'s ``plugins``)."""
    from jepaflow.registry import default_registry

    registry = default_registry()
    out: dict[str, dict[str, str]] = {}
    for section, comp in recipe.components.items():
        cls = comp.cls
        entry = {"kind": comp.kind, "name": comp.name, "class": f"{cls.__module__}:{cls.__qualname__}"}
        try:
            info = registry.info(comp.kind, comp.name)
            entry |= {"package": info.package, "version": info.version, "entry_point": info.target}
        except Exception:  # a class given directly (not through an entry point): record what is known
            entry |= {"package": "<not registered>", "version": "?"}
        out[section] = entry
    return out


#: (metrics.jsonl key, panel title) drawn by :func:`plot_curves`, each when the run logged it
CURVE_PANELS = (
    ("loss", "loss"),
    ("lr", "learning rate"),
    ("momentum", "EMA momentum"),
    ("wd", "weight decay"),
    ("rankme", "RankMe (monitor batch)"),
    ("repr_std_norm", "normalized feature std (monitor batch)"),
    ("knn_acc", "kNN accuracy (monitor subsets)"),
)


def plot_curves(metrics_path: Path, out_path: Path) -> Path | None:
    """One panel per logged quantity of :data:`CURVE_PANELS` (loss, learning rate, momentum, weight decay and the
    label-free monitors) against the step, four panels a row, as a PNG."""
    records = read_metrics(metrics_path) if metrics_path.exists() else []
    records = [r for r in records if "loss" in r]
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(k, t) for k, t in CURVE_PANELS if any(k in r for r in records)]
    ncols = min(4, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.2 * nrows), squeeze=False)
    for ax, (key, title) in zip(axes.flat, panels):
        xs = [r["step"] for r in records if key in r]
        ax.plot(xs, [r[key] for r in records if key in r], lw=1.5, marker="o" if len(xs) < 30 else None, ms=3)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path


class Progress:
    """A rich progress bar (rank 0, when enabled and stdout is a terminal) or plain log lines otherwise."""

    def __init__(self, total: int, start: int, enabled: bool):
        self.total = total
        self.rich = None
        if enabled and sys.stdout.isatty():
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            self.rich = RichProgress(
                TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
            )
            self.task = self.rich.add_task("train", total=total, completed=start, info="")
            self.rich.start()

    def advance(self, n: int = 1) -> None:
        if self.rich is not None:
            self.rich.advance(self.task, n)

    def report(self, record: dict[str, Any]) -> None:
        info = "  ".join(
            f"{k} {record[k]:.4g}" for k in ("loss", "lr", "momentum", "img_per_s") if k in record
        )
        if self.rich is not None:
            self.rich.update(self.task, info=info)
        else:
            eta = record.get("eta_s")
            eta_txt = f"  eta {eta / 60:.1f} min" if eta is not None else ""
            print(f"step {record['step']}/{self.total}  epoch {record['epoch']:.2f}  {info}{eta_txt}", flush=True)

    def close(self) -> None:
        if self.rich is not None:
            self.rich.stop()
