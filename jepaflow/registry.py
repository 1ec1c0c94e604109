"""Plugin discovery over ``importlib.metadata`` entry points.

One entry-point group per plugin kind. jepaflow registers its own plugins in its ``pyproject.toml``, the
same way a third-party package does, so there is a single road in. Loading is explicit and lazy: nothing is
imported until a recipe or ``jepaflow plugins list`` asks. Each entry point keeps its provenance (the
distribution that declared it) so that failures and name collisions can name the package responsible, and a
plugin that fails to import is recorded, never allowed to break the others.
"""

from __future__ import annotations

import importlib.metadata as md
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from jepaflow.errors import PluginError

#: plugin kind -> entry-point group
KINDS: dict[str, str] = {
    "encoder": "jepaflow.encoders",
    "predictor": "jepaflow.predictors",
    "masker": "jepaflow.maskers",
    "target_updater": "jepaflow.target_updaters",
    "view": "jepaflow.views",
    "head": "jepaflow.heads",
    "objective": "jepaflow.objectives",
    "dataset": "jepaflow.datasets",
}


@dataclass
class PluginInfo:
    """One entry point, with where it came from and (once loaded) its class or its import error."""

    kind: str
    name: str
    target: str  # "module:attr"
    package: str  # distribution name
    version: str
    loaded: Any = None
    error: str | None = None  # one-line summary of the import failure
    error_detail: str | None = None  # full traceback, for `plugins show`
    collides_with: list[PluginInfo] = field(default_factory=list)

    @property
    def status(self) -> str:
        if self.collides_with:
            return "name collision"
        if self.error is not None:
            return "failed to import"
        return "ok" if self.loaded is not None else "not loaded"


def _dist_of(ep: md.EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "<unknown>", "?"
    return dist.metadata["Name"] or "<unknown>", dist.version or "?"


class Registry:
    """Discovers entry points once and loads plugins on demand.

    ``entry_points`` is injectable (tests pass a fake); by default it is :func:`importlib.metadata.entry_points`.
    """

    def __init__(self, entry_points: Callable[..., Iterable[md.EntryPoint]] | None = None):
        self._entry_points = entry_points or md.entry_points
        self._infos: dict[tuple[str, str], PluginInfo] | None = None
        self._eps: dict[tuple[str, str], md.EntryPoint] = {}

    # ---------------------------------------------------------------------------------------------- discovery
    def _discover(self) -> dict[tuple[str, str], PluginInfo]:
        if self._infos is not None:
            return self._infos
        infos: dict[tuple[str, str], PluginInfo] = {}
        for kind, group in KINDS.items():
            for ep in self._entry_points(group=group):
                package, version = _dist_of(ep)
                info = PluginInfo(kind=kind, name=ep.name, target=ep.value, package=package, version=version)
                key = (kind, ep.name)
                if key in infos:
                    first = infos[key]
                    # The same distribution seen twice on sys.path (e.g. an editable install) is not a collision.
                    if (first.package, first.target) == (package, ep.value):
                        continue
                    first.collides_with.append(info)
                    continue
                infos[key] = info
                self._eps[key] = ep
        self._infos = infos
        return infos

    def infos(self, kind: str | None = None, load: bool = False) -> list[PluginInfo]:
        """Every discovered plugin (of ``kind``), sorted; with ``load`` each is imported (failures recorded)."""
        out = [i for (k, _), i in sorted(self._discover().items()) if kind is None or k == kind]
        if load:
            for info in out:
                self._load(info)
        return out

    def names(self, kind: str) -> list[str]:
        return [i.name for i in self.infos(kind)]

    def info(self, kind: str, name: str) -> PluginInfo:
        if kind not in KINDS:
            raise PluginError(f"unknown plugin kind {kind!r}", f"use one of: {', '.join(KINDS)}")
        info = self._discover().get((kind, name))
        if info is None:
            known = ", ".join(self.names(kind)) or "none installed"
            raise PluginError(
                f"no {kind} plugin named {name!r} (installed: {known})",
                f"check the spelling, or install the package that provides it (entry-point group {KINDS[kind]!r})",
            )
        return info

    # ---------------------------------------------------------------------------------------------- loading
    def _load(self, info: PluginInfo) -> None:
        if info.loaded is not None or info.error is not None:
            return
        try:
            info.loaded = self._eps[(info.kind, info.name)].load()
        except Exception as exc:  # a broken plugin must never take the others down
            info.error = f"{type(exc).__name__}: {exc}"
            info.error_detail = traceback.format_exc()

    def get(self, kind: str, name: str) -> Any:
        """The plugin class for ``kind``/``name``, or a :class:`PluginError` naming the problem and the fix."""
        info = self.info(kind, name)
        if info.collides_with:
            pkgs = [f"{i.package} ({i.target})" for i in [info, *info.collides_with]]
            raise PluginError(
                f"{kind} plugin name {name!r} is registered by more than one package: {'; '.join(pkgs)}",
                "uninstall one of them, or ask one package to rename its entry point",
            )
        self._load(info)
        if info.error is not None:
            raise PluginError(
                f"{kind} plugin {name!r} from package {info.package} {info.version} failed to import: {info.error}",
                f"fix or reinstall {info.package}; `jepaflow plugins show {name}` prints the full traceback",
            )
        return info.loaded

    def find(self, name: str) -> list[PluginInfo]:
        """Every plugin called ``name``, over all kinds (for ``plugins show NAME``)."""
        return [i for (_, n), i in sorted(self._discover().items()) if n == name]


_default: Registry | None = None


def default_registry() -> Registry:
    """The process-wide registry over the installed distributions."""
    global _default
    if _default is None:
        _default = Registry()
    return _default


def get_plugin(kind: str, name: str) -> Any:
    return default_registry().get(kind, name)
