"""User-facing errors.

Everything a user can cause (a broken recipe, an unknown plugin, a missing data folder, a plugin that fails to
import, a damaged checkpoint, a full disk) raises a :class:`JepaflowError`. The CLI prints its message, without a
traceback, and exits with the error's ``exit_code`` (2; 3 for a diverged run).

Messages echo what the user gave, so every echoed value goes through :func:`short`: a YAML alias bomb or a
5,000-digit number is shown as a few dozen characters, never expanded.
"""

from __future__ import annotations

import re
from typing import Any

#: most characters of a value echoed in a message
ECHO_LIMIT = 80


def short(value: Any, limit: int = ECHO_LIMIT) -> str:
    """``repr(value)`` cut to about ``limit`` characters, computed with a budget: containers are walked only
    as far as the budget reaches, so a value that expands to billions of items (YAML aliases nested 9 deep) or
    refers to itself costs no more than a short one."""
    parts: list[str] = []
    room = [limit]

    def emit(text: str) -> bool:
        if len(text) > room[0]:
            parts.append(text[: room[0]])
            room[0] = -1  # cut
            return False
        parts.append(text)
        room[0] -= len(text)
        return True

    def walk(v: Any, depth: int) -> bool:
        if isinstance(v, (dict, list, tuple, set, frozenset)):
            if depth > 8:
                return emit("...")
            opening, closing = {dict: "{}", list: "[]", tuple: "()"}.get(type(v), "{}")
            if not emit(opening):
                return False
            items = v.items() if isinstance(v, dict) else v
            for i, item in enumerate(items):
                if i and not emit(", "):
                    return False
                if isinstance(v, dict):
                    if not (walk(item[0], depth + 1) and emit(": ") and walk(item[1], depth + 1)):
                        return False
                elif not walk(item, depth + 1):
                    return False
            return emit(closing)
        if isinstance(v, int) and not isinstance(v, bool) and v.bit_length() > 64:
            return emit(f"<an integer of {len(str(v)) if v.bit_length() < 10_000 else 'thousands of'} digits>")
        if isinstance(v, (str, bytes)) and len(v) > limit:
            return emit(repr(v[: limit + 1]))
        return emit(repr(v))

    walk(value, 0)
    return "".join(parts) + ("..." if room[0] < 0 else "")


def clip(text: str, limit: int = 2000) -> str:
    """``text`` cut to ``limit`` characters (with a note of how much was left out)."""
    if len(text) <= limit:
        return text
    return text[:limit] + f"... ({len(text) - limit} more characters)"


_WORKER_PREFIX = re.compile(r"^Caught (\w+) in DataLoader worker process \d+\.\nOriginal Traceback")


class JepaflowError(Exception):
    """An error in the user's input: ``problem`` says what is wrong, ``fix`` what to do about it."""

    exit_code = 2

    def __init__(self, problem: str, fix: str | None = None):
        if fix is None and isinstance(problem, str) and _WORKER_PREFIX.match(problem):
            problem, fix = _unwrap_worker_message(problem, type(self).__name__)
        self.problem = problem
        self.fix = fix
        super().__init__(problem if fix is None else f"{problem}\n  fix: {fix}")


def _unwrap_worker_message(message: str, class_name: str) -> tuple[str, str | None]:
    """``(problem, fix)`` of a JepaflowError raised in a DataLoader worker.

    torch re-raises a worker's exception in the main process as ``type(exc)(text)``, where ``text`` is
    "Caught X in DataLoader worker process N" plus the worker's formatted traceback. The user should see the
    original message, not the traceback: it is the last ``...X: message`` line and what follows it."""
    marker = re.compile(rf"^[\w.]*\b{class_name}: ", re.MULTILINE)
    found = list(marker.finditer(message))
    if not found:
        return message, None
    text = message[found[-1].end():].rstrip("\n")
    problem, sep, fix = text.partition("\n  fix: ")
    return problem, (fix if sep else None)


class RecipeError(JepaflowError):
    """One or more invalid fields of a recipe, each with its YAML path (``masker.mode``)."""

    #: most issues listed in one message (the rest are counted)
    MAX_LISTED = 25

    def __init__(self, issues: list[tuple[str, str]], source: str | None = None, fix: str | None = None):
        self.issues = issues
        where = f" in {clip(source, 200)}" if source else ""
        shown = issues[: self.MAX_LISTED]
        lines = [f"{len(issues)} problem(s){where}:"] + [f"  {clip(path, 200)}: {clip(msg, 500)}" for path, msg in shown]
        if len(issues) > len(shown):
            lines.append(f"  ... and {len(issues) - len(shown)} more")
        super().__init__("\n".join(lines), fix or "edit the recipe (or the --set override) at the path shown")


class PluginError(JepaflowError):
    """A plugin that is unknown, failed to import, is disabled, or whose name two packages claim."""


class ContractError(PluginError):
    """A plugin whose output breaks its kind's contract (``jepaflow.testing``), found before training."""


class DataError(JepaflowError):
    """A data set that cannot be read (missing folder, no images, too many bad files, a dead loader worker)."""


class CheckpointError(JepaflowError):
    """A checkpoint that cannot be read (missing, damaged, unsafe, inconsistent) or written (disk full)."""


class OutputPathError(JepaflowError):
    """An output path (run folder, ``--output`` file) that cannot be written."""


class TrainingDiverged(JepaflowError):
    """The loss or the weights became NaN or infinite; no checkpoint is written from them."""

    exit_code = 3
