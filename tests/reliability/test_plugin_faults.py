"""Third-party plugins that misbehave, installed for real (a ``.dist-info`` with entry points on ``sys.path``):
a class without ``Config``, an entry point naming a module, a ``sys.exit`` at import, a constructor raising, a
masker raising inside ``run``; and the environment variables that decide which packages may plug in."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import yaml
from clikit import assert_one_message, invoke

import jepaflow.registry as registry_module

MASKER_OK = '''
import torch
from jepaflow.interfaces import Masker, PluginConfig
from jepaflow.maskers.random import RandomMasker


class GoodMasker(RandomMasker):
    """A working masker of a third-party package."""
'''

PLUGINS = {
    # distribution: (entry point name = target, module source)
    "relfault-noconfig": ("noconfig = relfault_noconfig:NoConfigMasker",
                          "class NoConfigMasker:  # not derived from jepaflow.interfaces.Masker\n"
                          "    def __call__(self, batch_size, grid_size, generator):\n"
                          "        raise NotImplementedError\n"),
    "relfault-module": ("modulemask = relfault_module", "X = 1\n"),
    "relfault-exits": ("exits = relfault_exits:M", "import sys\nsys.exit(0)\n"),
    "relfault-ctor": ("ctorfails = relfault_ctor:CtorFails",
                      "from jepaflow.maskers.random import RandomMasker\n"
                      "class CtorFails(RandomMasker):\n"
                      "    def __init__(self, config=None):\n"
                      "        raise RuntimeError('cannot open /dev/nvidia0')\n"),
    "relfault-runfails": ("runfails = relfault_runfails:RunFails",
                          "from jepaflow.maskers.random import RandomMasker\n"
                          "class RunFails(RandomMasker):\n"
                          "    def __call__(self, batch_size, grid_size, generator):\n"
                          "        raise IndexError('list index out of range')\n"),
    # passes the start-up check (its first call), then fails inside the run (in the loader workers, if any)
    "relfault-latefails": ("latefails = relfault_latefails:LateFails",
                           "from jepaflow.maskers.random import RandomMasker\n"
                           "class LateFails(RandomMasker):\n"
                           "    calls = 0\n"
                           "    def __call__(self, batch_size, grid_size, generator):\n"
                           "        LateFails.calls += 1\n"
                           "        if LateFails.calls > 1:\n"
                           "            raise IndexError('list index out of range')\n"
                           "        return super().__call__(batch_size, grid_size, generator)\n"),
    "relfault-good": ("goodmask = relfault_good:GoodMasker", MASKER_OK),
}


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("site")
    for dist, (entry, source) in PLUGINS.items():
        info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(f"[jepaflow.maskers]\n{entry}\n")
        module = entry.split("=")[1].strip().split(":")[0]
        (site / f"{module}.py").write_text(source)
    return site


@pytest.fixture
def installed(site, monkeypatch):
    """The fake distributions on sys.path, a fresh registry before and after, their modules forgotten after."""
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    registry_module._default = None
    yield site
    registry_module._default = None
    for name in [m for m in sys.modules if m.startswith("relfault_")]:
        del sys.modules[name]


def plugin_rows(stdout: str) -> dict[str, list[str]]:
    rows = [[c.strip() for c in line.strip().strip("│").split("│")] for line in stdout.splitlines()
            if line.strip().startswith("│")]
    return {r[1]: r for r in rows if len(r) == 5}


def with_masker(recipe_file, name: str, workers: int = 0) -> Path:
    path = recipe_file({"train": {"num_workers": workers, "max_steps": 2}})
    raw = yaml.safe_load(path.read_text())
    raw["masker"] = {"name": name}
    raw["objective"] = {"name": "mae"}  # a masker with a fixed number of visible patches
    raw["predictor"] = {"name": "mae_decoder", "embed_dim": 32, "depth": 1, "num_heads": 2}
    raw.pop("target_updater")
    path.write_text(yaml.safe_dump(raw))
    return path


def test_plugins_list_survives_every_broken_plugin(installed):
    result = invoke("plugins", "list")
    assert result.exit_code == 0, result.stderr
    rows = plugin_rows(result.stdout)
    assert "has no Config" in rows["noconfig"][4]
    assert "names a module, not a class" in rows["modulemask"][4]
    assert "called sys.exit(0) while being imported" in rows["exits"][4]
    assert rows["goodmask"][4] == "ok" and rows["multiblock"][4] == "ok"
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize("name,fragment", [
    ("noconfig", "has no Config"),
    ("modulemask", "names a module"),
    ("exits", "sys.exit(0)"),
])
def test_a_recipe_naming_a_broken_plugin(installed, recipe_file, name, fragment):
    assert_one_message(invoke("validate", with_masker(recipe_file, name)), "masker.name", fragment)


def test_a_constructor_raising_names_the_plugin(installed, recipe_file):
    path = with_masker(recipe_file, "ctorfails")
    for command in ("validate", "run"):
        assert_one_message(invoke(command, path), "masker plugin 'ctorfails'", "relfault_ctor",
                           "RuntimeError: cannot open /dev/nvidia0")


def test_a_masker_raising_at_once_is_caught_before_training(installed, recipe_file):
    path = with_masker(recipe_file, "runfails")
    for command in ("run", "validate"):
        assert_one_message(invoke(command, path), "masker 'runfails'", "relfault-runfails",
                           "IndexError: list index out of range")
    assert not (path.parent / "run" / "checkpoints").exists()


@pytest.mark.parametrize("workers", [0, 1])
def test_a_masker_raising_inside_run(installed, recipe_file, workers):
    path = with_masker(recipe_file, "latefails", workers)
    err = assert_one_message(invoke("run", path), "LateFails", "relfault_latefails", "raised IndexError",
                             "list index out of range", "step 0")
    assert "DataLoader worker" not in err


def test_autoload_can_be_disabled(installed, recipe_file):
    env = {"JEPAFLOW_DISABLE_PLUGIN_AUTOLOAD": "1"}
    result = invoke("plugins", "list", env=env)
    assert result.exit_code == 0, result.stderr
    rows = plugin_rows(result.stdout)
    for name in ("noconfig", "modulemask", "exits", "goodmask", "ctorfails", "runfails"):
        assert rows[name][4].startswith("disabled: JEPAFLOW_DISABLE_PLUGIN_AUTOLOAD is set"), rows[name]
    assert rows["multiblock"][4] == "ok"  # jepaflow's own plugins stay
    assert not [m for m in sys.modules if m.startswith("relfault_")], "a disabled plugin was imported"
    assert_one_message(invoke("validate", with_masker(recipe_file, "goodmask"), env=env),
                       "disabled", "JEPAFLOW_PLUGIN_PACKAGES")
    # ... except the packages allowed by name
    env["JEPAFLOW_PLUGIN_PACKAGES"] = "relfault_good"  # any spelling of the distribution name
    registry_module._default = None  # the environment is read once per process: start a new "process"
    assert invoke("validate", with_masker(recipe_file, "goodmask"), env=env).exit_code == 0


def test_an_allowlist_alone_keeps_only_the_listed_packages(installed, recipe_file):
    env = {"JEPAFLOW_PLUGIN_PACKAGES": "relfault-good, some-other-pkg"}
    rows = plugin_rows(invoke("plugins", "list", env=env).stdout)
    assert rows["goodmask"][4] == "ok"
    assert rows["exits"][4] == "disabled: JEPAFLOW_PLUGIN_PACKAGES does not list relfault-exits"
    assert rows["vit"][4] == "ok"
    shown = invoke("plugins", "show", "exits", env=env)
    assert shown.exit_code == 0 and "disabled" in shown.stdout
    assert not [m for m in sys.modules if m.startswith("relfault_") and m != "relfault_good"]
