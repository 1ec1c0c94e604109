"""Plugin discovery over a faked ``importlib.metadata.entry_points``: lazy loading, import failures kept to
the plugin that has them, duplicate distributions, name collisions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from pydantic import BaseModel

from jepaflow.errors import PluginError
from jepaflow.registry import KINDS, Registry


@dataclass
class FakeDist:
    name: str
    version: str = "1.0"

    @property
    def metadata(self) -> dict[str, str]:
        return {"Name": self.name}


@dataclass
class FakeEntryPoint:
    """What the registry reads from an ``importlib.metadata.EntryPoint``; ``load`` is counted."""

    name: str
    value: str
    group: str
    dist: FakeDist | None
    obj: Any = None
    error: BaseException | None = None
    loads: list[str] = field(default_factory=list)

    def load(self) -> Any:
        self.loads.append(self.name)
        if self.error is not None:
            raise self.error
        return self.obj


class FakeEntryPoints:
    """Stands for ``importlib.metadata.entry_points``: ``(group=...)`` -> entry points of that group."""

    def __init__(self, eps: list[FakeEntryPoint]):
        self.eps = eps
        self.calls: list[str] = []

    def __call__(self, *, group: str) -> list[FakeEntryPoint]:
        self.calls.append(group)
        return [ep for ep in self.eps if ep.group == group]


class _NoFields(BaseModel):
    pass


class MaskerA:
    Config = _NoFields


class MaskerB:
    Config = _NoFields


class Encoder:
    Config = _NoFields


def ep(kind: str, name: str, value: str, dist: str | None, **kw: Any) -> FakeEntryPoint:
    return FakeEntryPoint(name=name, value=value, group=KINDS[kind], dist=FakeDist(dist) if dist else None, **kw)


@pytest.fixture
def eps() -> list[FakeEntryPoint]:
    return [
        ep("masker", "blocks", "pkg_a.masks:MaskerA", "pkg-a", obj=MaskerA),
        ep("masker", "zebra", "pkg_b.masks:MaskerB", "pkg-b", obj=MaskerB),
        ep("encoder", "vit", "pkg_a.enc:Encoder", "pkg-a", obj=Encoder),
        ep("masker", "broken", "brokenpkg:Masker", "brokenpkg", error=ImportError("No module named 'torchvisionx'")),
    ]


def test_discovery_by_kind_with_provenance(eps):
    reg = Registry(FakeEntryPoints(eps))
    assert reg.names("masker") == ["blocks", "broken", "zebra"]
    assert reg.names("encoder") == ["vit"]
    assert reg.names("dataset") == []
    info = reg.info("masker", "zebra")
    assert (info.kind, info.name, info.target, info.package, info.version) == (
        "masker",
        "zebra",
        "pkg_b.masks:MaskerB",
        "pkg-b",
        "1.0",
    )
    assert [(i.kind, i.name) for i in reg.infos()] == [
        ("encoder", "vit"),
        ("masker", "blocks"),
        ("masker", "broken"),
        ("masker", "zebra"),
    ]


def test_entry_points_are_read_once_per_group(eps):
    fake = FakeEntryPoints(eps)
    reg = Registry(fake)
    reg.names("masker")
    reg.infos()
    reg.get("masker", "blocks")
    assert sorted(fake.calls) == sorted(KINDS.values())


def test_nothing_is_loaded_until_asked(eps):
    reg = Registry(FakeEntryPoints(eps))
    reg.infos()
    reg.names("masker")
    reg.info("masker", "zebra")
    assert all(not e.loads for e in eps)
    assert all(i.status == "not loaded" for i in reg.infos())

    assert reg.get("masker", "zebra") is MaskerB
    assert [e.name for e in eps if e.loads] == ["zebra"]
    reg.get("masker", "zebra")
    assert eps[1].loads == ["zebra"], "a loaded plugin is cached, not loaded again"
    assert reg.info("masker", "zebra").status == "ok"


def test_an_import_failure_stays_with_its_plugin(eps):
    reg = Registry(FakeEntryPoints(eps))
    infos = {i.name: i for i in reg.infos(load=True)}
    # Everything was attempted; only the broken one failed, and it is recorded rather than raised.
    assert all(e.loads for e in eps)
    assert infos["broken"].status == "failed to import"
    assert infos["broken"].error == "ImportError: No module named 'torchvisionx'"
    assert "Traceback" in infos["broken"].error_detail and "torchvisionx" in infos["broken"].error_detail
    assert [infos[n].status for n in ("blocks", "zebra", "vit")] == ["ok", "ok", "ok"]
    assert reg.get("masker", "blocks") is MaskerA

    with pytest.raises(PluginError) as exc:
        reg.get("masker", "broken")
    msg = str(exc.value)
    assert "brokenpkg" in msg and "failed to import" in msg and "torchvisionx" in msg
    assert "plugins show broken" in exc.value.fix


def test_a_non_import_error_at_load_is_also_isolated():
    eps = [
        ep("masker", "bad", "bad:M", "badpkg", error=RuntimeError("CUDA driver too old")),
        ep("masker", "good", "good:M", "goodpkg", obj=MaskerA),
    ]
    reg = Registry(FakeEntryPoints(eps))
    infos = {i.name: i for i in reg.infos(load=True)}
    assert infos["bad"].error == "RuntimeError: CUDA driver too old"
    assert infos["good"].loaded is MaskerA


def test_same_distribution_seen_twice_is_not_a_collision():
    # An editable install seen through both site-packages and the source tree.
    eps = [
        ep("masker", "blocks", "pkg_a.masks:MaskerA", "pkg-a", obj=MaskerA),
        ep("masker", "blocks", "pkg_a.masks:MaskerA", "pkg-a", obj=MaskerA),
    ]
    reg = Registry(FakeEntryPoints(eps))
    assert reg.names("masker") == ["blocks"]
    info = reg.info("masker", "blocks")
    assert info.collides_with == [] and info.status == "not loaded"
    assert reg.get("masker", "blocks") is MaskerA


def test_collision_names_both_packages():
    eps = [
        ep("masker", "blocks", "pkg_a.masks:MaskerA", "pkg-a", obj=MaskerA),
        ep("masker", "blocks", "pkg_b.masks:MaskerB", "pkg-b", obj=MaskerB),
        ep("encoder", "blocks", "pkg_b.enc:Encoder", "pkg-b", obj=Encoder),  # same name, other kind: fine
    ]
    reg = Registry(FakeEntryPoints(eps))
    info = reg.info("masker", "blocks")
    assert info.status == "name collision"
    assert [o.package for o in info.collides_with] == ["pkg-b"]
    with pytest.raises(PluginError) as exc:
        reg.get("masker", "blocks")
    msg = str(exc.value)
    assert "pkg-a" in msg and "pkg-b" in msg
    assert "pkg_a.masks:MaskerA" in msg and "pkg_b.masks:MaskerB" in msg
    assert not eps[0].loads and not eps[1].loads, "neither side of a collision is silently chosen"
    assert reg.get("encoder", "blocks") is Encoder
    assert [i.kind for i in reg.find("blocks")] == ["encoder", "masker"]


def test_unknown_name_lists_the_installed_ones(eps):
    reg = Registry(FakeEntryPoints(eps))
    with pytest.raises(PluginError) as exc:
        reg.get("masker", "blokcs")
    assert "'blokcs'" in str(exc.value) and "blocks, broken, zebra" in str(exc.value)
    assert "jepaflow.maskers" in exc.value.fix
    with pytest.raises(PluginError, match="none installed"):
        reg.get("dataset", "cifar")
    with pytest.raises(PluginError, match="unknown plugin kind"):
        reg.get("maskr", "blocks")


def test_missing_distribution_metadata_is_tolerated():
    reg = Registry(FakeEntryPoints([ep("masker", "orphan", "orphan:M", None, obj=MaskerA)]))
    info = reg.info("masker", "orphan")
    assert (info.package, info.version) == ("<unknown>", "?")
    assert reg.get("masker", "orphan") is MaskerA


def test_default_registry_sees_the_builtin_entry_points():
    # The real metadata of the installed jepaflow: discovery only, nothing imported.
    reg = Registry()
    assert {"vit", "timm_vit"} <= set(reg.names("encoder"))
    assert "multiblock" in reg.names("masker")
    assert reg.info("objective", "ijepa").package == "jepaflow"
    assert reg.info("objective", "ijepa").loaded is None
