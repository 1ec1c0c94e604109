"""Plugin discovery over ``importlib.metadata`` entry points.

One entry-point group per plugin kind. jepaflow registers its own plugins in its ``pyproject.toml``, the
same way a third-party package does, so there is a single road in. Loading is explicit and lazy: nothing is
imported until a recipe or ``jepaflow plugins list`` asks. Each entry point keeps its provenance (the
distribution that declared it) so that failures and name collisions can name the package responsible, and a
plugin that fails to import is recorded, never allowed to break the others: an exception, a ``sys.exit`` at
import time, an entry point naming a module instead of a class, a class without a pydantic ``Config``.

On shared machines, which third-party packages may plug in is set by two environment variables (jepaflow's own
plugins are always available)::

    JEPAFLOW_DISABLE_PLUGIN_AUTOLOAD=1       no third-party plugin is used ...
    JEPAFLOW_PLUGIN_PACKAGES=pkg-a,pkg-b     ... except these distributions (alone: only these are used)

Disabled plugins are still listed (status "disabled"), never imported, and never collide with others.
"""

from __future__ import annotations

import importlib.metadata as md
import inspect
import os
import re
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from jepaflow.errors import PluginError, clip, short

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
    disabled: str | None = None  # why the plugin may not be used (an environment variable), None if it may

    @property
    def status(self) -> str:
        if self.disabled is not None:
            return "disabled"
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


#: the distribution whose plugins are always available
BUILTIN_PACKAGE = "jepaflow"
DISABLE_ENV = "JEPAFLOW_DISABLE_PLUGIN_AUTOLOAD"
ALLOW_ENV = "JEPAFLOW_PLUGIN_PACKAGES"


def _normalize(package: str) -> str:
    """A distribution name in its canonical form (PEP 503): ``Jepaflow_Stripes`` -> ``jepaflow-stripes``."""
    return re.sub(r"[-_.]+", "-", package).lower()


def plugin_policy(environ: dict[str, str] | None = None) -> Callable[[str], str | None]:
    """From the environment, a function ``package -> None`` (allowed) or the reason it is not."""
    env = os.environ if environ is None else environ
    disabled = env.get(DISABLE_ENV, "").strip().lower() not in ("", "0", "false", "no")
    allow_text = env.get(ALLOW_ENV)
    allowed = None if allow_text is None else {_normalize(p) for p in allow_text.split(",") if p.strip()}

    def reason(package: str) -> str | None:
        name = _normalize(package)
        if name == BUILTIN_PACKAGE or (allowed is not None and name in allowed):
            return None
        if allowed is not None:
            return f"{ALLOW_ENV} does not list {package}"
        if disabled:
            return f"{DISABLE_ENV} is set"
        return None

    return reason


class Registry:
    """Discovers entry points once and loads plugins on demand.

    ``entry_points`` is injectable (tests pass a fake); by default it is :func:`importlib.metadata.entry_points`.
    """

    def __init__(self, entry_points: Callable[..., Iterable[md.EntryPoint]] | None = None,
                 environ: dict[str, str] | None = None):
        self._entry_points = entry_points or md.entry_points
        self._policy = plugin_policy(environ)
        self._infos: dict[tuple[str, str], PluginInfo] | None = None
        self._disabled: dict[tuple[str, str], list[PluginInfo]] = {}
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
                info.disabled = self._policy(package)
                if info.disabled is not None:
                    self._disabled.setdefault(key, []).append(info)
                    continue
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

    def infos(self, kind: str | None = None, load: bool = False, disabled: bool = False) -> list[PluginInfo]:
        """Every discovered plugin (of ``kind``), sorted; with ``load`` each is imported (failures recorded);
        with ``disabled``, the plugins disabled by the environment too (never imported)."""
        out = [i for (k, _), i in sorted(self._discover().items()) if kind is None or k == kind]
        if load:
            for info in out:
                self._load(info)
        if disabled:
            out += [i for (k, _), group in sorted(self._disabled.items()) for i in group if kind is None or k == kind]
            out.sort(key=lambda i: (i.kind, i.name, i.disabled is not None))
        return out

    def names(self, kind: str) -> list[str]:
        return [i.name for i in self.infos(kind)]

    def info(self, kind: str, name: str) -> PluginInfo:
        if kind not in KINDS:
            raise PluginError(f"unknown plugin kind {kind!r}", f"use one of: {', '.join(KINDS)}")
        info = self._discover().get((kind, name))
        if info is None:
            off = self._disabled.get((kind, name))
            if off:
                raise PluginError(
                    f"the {kind} plugin {short(name)} of package {off[0].package} is disabled ({off[0].disabled})",
                    f"unset {DISABLE_ENV}, or add {off[0].package} to {ALLOW_ENV} (comma-separated package names)",
                )
            known = ", ".join(self.names(kind)) or "none installed"
            raise PluginError(
                f"no {kind} plugin named {short(name)} (installed: {clip(known, 500)})",
                f"check the spelling, or install the package that provides it (entry-point group {KINDS[kind]!r})",
            )
        return info

    # ---------------------------------------------------------------------------------------------- loading
    def _load(self, info: PluginInfo) -> None:
        if info.loaded is not None or info.error is not None:
            return
        try:
            loaded = self._eps[(info.kind, info.name)].load()
        except (Exception, SystemExit) as exc:  # a broken plugin must never take the others down
            what = f"called sys.exit({exc.code!r}) while being imported" if isinstance(exc, SystemExit) else None
            info.error = clip(what or f"{type(exc).__name__}: {exc}", 500)
            info.error_detail = traceback.format_exc()
            return
        problem = _not_a_plugin(info, loaded)
        if problem is not None:
            info.error = problem
            info.error_detail = problem
            return
        info.loaded = loaded

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
        return [i for i in self.infos(disabled=True) if i.name == name]


def _not_a_plugin(info: PluginInfo, obj: Any) -> str | None:
    """Why ``obj``, loaded from ``info``'s entry point, cannot be a plugin class (None if it can)."""
    if inspect.ismodule(obj):
        return (f"the entry point {info.target!r} names a module, not a class: write it as "
                f"'{info.target}:ClassName'")
    if not inspect.isclass(obj):
        return f"the entry point {info.target!r} names a {type(obj).__name__}, not a class"
    config = getattr(obj, "Config", None)
    from pydantic import BaseModel  # only when a plugin is loaded: discovery stays cheap

    if not (inspect.isclass(config) and issubclass(config, BaseModel)):
        return (f"{obj.__qualname__} has no Config (a pydantic model of its recipe fields, e.g. a subclass of "
                "jepaflow.interfaces.PluginConfig); every plugin class needs one")
    requires = getattr(obj, "requires", frozenset())
    if info.kind == "objective" and not (isinstance(requires, (set, frozenset, list, tuple))
                                         and all(isinstance(r, str) for r in requires)):
        return f"{obj.__qualname__}.requires must be a set of recipe section names"
    return None


_default: Registry | None = None


def default_registry() -> Registry:
    """The process-wide registry over the installed distributions."""
    global _default
    if _default is None:
        _default = Registry()
    return _default


def get_plugin(kind: str, name: str) -> Any:
    return default_registry().get(kind, name)
