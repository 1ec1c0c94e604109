"""Faults the training loop meets, turned into one message each: a diverged run, a dead DataLoader worker, a
plugin raising mid-run, a lost or hanging process of a distributed run, a stop signal during the end-of-run
probe. The trainer calls these at a few places; the logic lives here so the loop stays readable."""

from __future__ import annotations

import contextlib
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jepaflow.errors import DataError, JepaflowError, PluginError, TrainingDiverged, clip


class DistributedError(JepaflowError):
    """A collective operation with the other processes of the run failed or timed out."""


def diverged(at_step: int, last_ckpt: Path) -> TrainingDiverged:
    """The divergence message; it promises a checkpoint only when one exists (written before, from finite
    weights: no checkpoint is ever written from non-finite ones)."""
    if last_ckpt.is_file():
        kept = f"the last good checkpoint is kept at {last_ckpt}"
        fix = "lower optim.lr, enable optim.grad_clip, or check the data; then --resume (from that checkpoint) " \
              "or restart"
    else:
        kept = "no checkpoint had been written yet, so there is nothing to resume"
        fix = "lower optim.lr, enable optim.grad_clip, or check the data; then restart the run"
    return TrainingDiverged(
        f"the loss or the weights became NaN or infinite before step {at_step}; {kept}", fix)


# ------------------------------------------------------------------------------------------------ data loading
_LOADER_DEATH = re.compile(r"DataLoader worker \(pids?\(?s?\)? ?[\d, ]+\)? (is killed by signal|exited unexpectedly)"
                           r"|DataLoader worker .* (killed|exited)")


def loader_failure(exc: BaseException, num_workers: int, last_ckpt: Path) -> DataError | None:
    """The message for a DataLoader worker that died (killed by the kernel's OOM killer, a segfault in an image
    decoder, a signal); None if ``exc`` is something else. torch raises it from its SIGCHLD handler, so it can
    surface anywhere in the loop (even inside ``backward``), hence this is applied to the whole run."""
    text = str(exc)
    if not isinstance(exc, RuntimeError) or "DataLoader worker" not in text or not _LOADER_DEATH.search(text):
        return None
    resume = f"then continue from {last_ckpt} with --resume" if last_ckpt.is_file() else "then restart the run"
    return DataError(
        f"a data-loading worker process died ({clip(text.splitlines()[0], 200)}); with {num_workers} worker(s) "
        "this is most often the kernel's out-of-memory killer, or a crash while decoding an image",
        f"lower train.num_workers or train.batch_size (or give the job more memory), {resume}",
    )


def runtime_failure(exc: BaseException, num_workers: int, rank: int, world: int,
                    last_ckpt: Path) -> JepaflowError | None:
    """The message for a RuntimeError that is a fault of the environment (a dead loader worker, a lost or hung
    process); None for anything else (a bug keeps its traceback)."""
    return loader_failure(exc, num_workers, last_ckpt) or distributed_failure(exc, rank, world, last_ckpt)


@contextlib.contextmanager
def plugin_errors(section: str, plugin: Any, doing: str) -> Iterator[None]:
    """A plugin's own exception (not a :class:`JepaflowError`) raised while ``doing`` becomes a
    :class:`PluginError` naming the recipe section and the plugin's class and module, in one line."""
    try:
        yield
    except JepaflowError:
        raise
    except Exception as exc:
        cls = type(plugin)
        raise PluginError(
            f"the {section} plugin {cls.__name__} (module {cls.__module__}) raised {type(exc).__name__} while "
            f"{doing}: {clip(str(exc), 300)}",
            f"check the {section} section of the recipe against the plugin's documentation, or report it to the "
            "plugin's authors",
        ) from None


# ------------------------------------------------------------------------------------------------ distributed
_DIST_FAILURE = re.compile(
    r"gloo|nccl|Connection (reset|closed|refused)|timed out|Timeout|Socket|ProcessGroup|DistBackendError"
    r"|Broken pipe|peer",
    re.IGNORECASE,
)


def distributed_failure(exc: BaseException, rank: int, world: int, last_ckpt: Path) -> DistributedError | None:
    """The message for a failed or timed-out collective on ``rank`` (None if ``exc`` is not one)."""
    if world <= 1 or not isinstance(exc, RuntimeError):
        return None
    text = str(exc)
    name = type(exc).__name__
    if not (_DIST_FAILURE.search(text) or "DistBackendError" in name or "DistNetworkError" in name):
        return None
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("Exception raised")]
    detail = clip(" ".join(lines[:2]), 240)
    timed_out = "timed out" in text.lower() or "timeout" in text.lower()
    cause = ("another process stopped answering within train.dist_timeout_s" if timed_out
             else "another process of the run has died or lost its connection")
    resume = (f"continue from {last_ckpt} with --resume" if last_ckpt.is_file() else "restart the run")
    return DistributedError(
        f"process {rank} of {world}: a collective operation failed ({detail}): {cause}",
        f"look at the other processes' logs (the first to fail is the cause), then {resume}",
    )


# ------------------------------------------------------------------------------------------------ stop signals
class StopSignal(BaseException):
    """SIGTERM/SIGINT received where the work cannot pause at a step boundary (the end-of-run probe).
    A BaseException, like KeyboardInterrupt, so that no ``except Exception`` in a plugin swallows it."""

    def __init__(self, signum: int):
        self.signum = signum
        self.name = signal.Signals(signum).name
        self.exit_code = 130 if signum == signal.SIGINT else 143
        super().__init__(self.name)


@contextlib.contextmanager
def raise_on_stop_signals() -> Iterator[None]:
    """Inside the block, SIGTERM and SIGINT raise :class:`StopSignal` (instead of killing the process without
    a word); the previous handlers are restored afterwards."""

    def handle(signum, frame):
        raise StopSignal(signum)

    previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            previous[sig] = signal.signal(sig, handle)
        except ValueError:  # not the main thread: signals cannot be handled here
            pass
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


__all__ = [
    "DistributedError",
    "StopSignal",
    "distributed_failure",
    "diverged",
    "loader_failure",
    "plugin_errors",
    "raise_on_stop_signals",
    "runtime_failure",
]
