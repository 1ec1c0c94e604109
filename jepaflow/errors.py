"""User-facing errors.

Everything a user can cause (a broken recipe, an unknown plugin, a missing data folder, a plugin that fails to
import) raises a :class:`JepaflowError`. The CLI prints its message, without a traceback, and exits with code 2.
"""

from __future__ import annotations


class JepaflowError(Exception):
    """An error in the user's input: ``problem`` says what is wrong, ``fix`` what to do about it."""

    exit_code = 2

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(problem if fix is None else f"{problem}\n  fix: {fix}")


class RecipeError(JepaflowError):
    """One or more invalid fields of a recipe, each with its YAML path (``masker.mode``)."""

    def __init__(self, issues: list[tuple[str, str]], source: str | None = None, fix: str | None = None):
        self.issues = issues
        where = f" in {source}" if source else ""
        lines = [f"{len(issues)} problem(s){where}:"] + [f"  {path}: {msg}" for path, msg in issues]
        super().__init__("\n".join(lines), fix or "edit the recipe (or the --set override) at the path shown")


class PluginError(JepaflowError):
    """A plugin that is unknown, failed to import, or whose name two packages claim."""


class ContractError(PluginError):
    """A plugin whose output breaks its kind's contract (``jepaflow.testing``), found before training."""


class DataError(JepaflowError):
    """A data set that cannot be read (missing folder, no images, bad files)."""


class TrainingDiverged(JepaflowError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""

    exit_code = 3
