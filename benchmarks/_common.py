"""Helpers shared by the benchmark scripts: machine description, clocks, memory high-water marks, markdown."""

from __future__ import annotations

import ctypes
import math
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def load_average() -> str:
    """The 1, 5 and 15-minute load averages (a shared machine's timings are only read next to them)."""
    try:
        return " ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


def machine_lines(command: str, software: str = "") -> list[str]:
    """Markdown bullet lines: CPU model and cores, GPU, load average, Python/torch/jepaflow versions (plus
    ``software``, e.g. ``"scikit-learn 1.9.1, "``), git commit, date, command."""
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())) or "none"
    import jepaflow

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                            text=True).stdout.strip() or "unknown"
    return [
        f"- machine: {cpu}, {os.cpu_count()} logical cores ({usable} usable by this process, "
        f"{torch.get_num_threads()} torch threads); GPU: {gpu}; load average at start (1, 5, 15 min): {load_average()}",
        f"- software: Python {platform.python_version()}, torch {torch.__version__}, {software}jepaflow "
        f"{jepaflow.__version__} (git {commit}); {time.strftime('%Y-%m-%d %H:%M %Z')}",
        f"- command: `{command}`",
    ]


def command_line(argv: list[str] | None) -> str:
    import shlex

    return "python " + shlex.join(sys.argv if argv is None else [sys.argv[0], *argv])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in [0, 100]) of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


# ------------------------------------------------------------------------------------------------ memory
_LIBC = None


def release_freed_host_memory() -> None:
    """Hand memory that glibc's malloc keeps after ``free`` back to the OS (``malloc_trim(0)``), so that the next
    resident-set reading is not flattered by memory freed by whatever ran before. No-op where unavailable."""
    global _LIBC
    try:
        _LIBC = _LIBC or ctypes.CDLL("libc.so.6")
        _LIBC.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_mib() -> float | None:
    """Current resident set size of this process (``VmRSS``), MiB; None off Linux."""
    kib = _status_kib("VmRSS")
    return None if kib is None else kib / 1024


def reset_peak_rss() -> bool:
    """Reset this process's resident-set high-water mark (``VmHWM``) to its current RSS (Linux >= 4.0: write 5
    to ``/proc/self/clear_refs``). Returns False where that is not possible (then :func:`peak_rss_mib` is the
    peak since the process started)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> float:
    """Resident-set high-water mark since the last :func:`reset_peak_rss` (``VmHWM``), else ``ru_maxrss``. MiB."""
    kib = _status_kib("VmHWM")
    if kib is None:
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kib / 1024


class PeakMemory:
    """Peak memory of a region of code, per device.

    CUDA: ``torch.cuda.max_memory_allocated`` over the region (tensors only; the caching allocator's reserve and
    the CUDA context are not counted). CPU: the process's resident-set high-water mark over the region minus the
    resident set at its start, after freed heap memory was handed back to the OS (``malloc_trim``): the memory
    the region added at its peak (activations, gradients, temporaries, optimizer state created in it), including
    what torch's CPU allocator and glibc keep. ``tracemalloc`` would miss torch's allocations entirely.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.start = 0.0
        self.peak = 0.0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device) / 2**20
        else:
            release_freed_host_memory()
            reset_peak_rss()
            self.start = rss_mib() or 0.0
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self.peak = peak_rss_mib()

    @property
    def added(self) -> float:
        """MiB above the start of the region at its peak."""
        return max(0.0, self.peak - self.start)


def fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return f"{v:,.{digits}f}"
    return str(v).replace("|", "\\|")



def emit(text: str, out: str | None, append: bool) -> None:
    """Print a report and, with ``out``, write it there (appended after a blank line with ``append``)."""
    print(text, flush=True)
    if out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a" if append and path.exists() else "w") as f:
            f.write(("\n" if f.tell() else "") + text)

def table(head: list[str], rows: list[list[Any]], left: int = 1) -> list[str]:
    """A markdown table; the first ``left`` columns are left-aligned, the others right-aligned."""
    out = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * left + ["---:"] * (len(head) - left)) + "|"]
    out += ["| " + " | ".join(fmt(c) if not isinstance(c, str) else c for c in r) + " |" for r in rows]
    return out


def import_reference(path: str | Path) -> None:
    """Make the official I-JEPA source importable as ``src.*`` from a checkout of facebookresearch/ijepa (the
    folder that holds ``src/``). Nothing of it is copied into jepaflow."""
    root = Path(path).expanduser().resolve()
    if not (root / "src" / "models" / "vision_transformer.py").is_file():
        raise SystemExit(
            f"error: {root} is not a checkout of facebookresearch/ijepa (no src/models/vision_transformer.py)\n"
            "fix: pass --reference the folder that holds src/ (git clone https://github.com/facebookresearch/ijepa)"
        )
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    import logging

    import src.helper  # noqa: F401  (configures the root logger at INFO on stdout; quiet it)

    logging.getLogger().setLevel(logging.WARNING)
