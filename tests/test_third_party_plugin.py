"""The example third-party package ``plugins/jepaflow-stripes``, installed for real with pip into a temporary
folder, is found through its entry point and used by a recipe exactly like a built-in masker."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PLUGIN_SRC = REPO / "plugins" / "jepaflow-stripes"

RECIPE = {
    "seed": 1,
    "data": {"name": "synthetic", "image_size": 32, "num_train": 32, "num_test": 16},
    "encoder": {"name": "vit", "size": "tiny", "patch_size": 8, "img_size": 32, "depth": 2},
    "predictor": {"name": "vit_predictor", "embed_dim": 32, "depth": 1, "num_heads": 2},
    "masker": {"name": "stripes", "num_targets": 2, "stripe_width": 1, "orientation": "random"},
    "target_updater": {"name": "ema"},
    "objective": {"name": "ijepa"},
    "optim": {"epochs": 1, "warmup_epochs": 0},
    "train": {"batch_size": 8, "num_workers": 0, "progress": False, "device": "cpu", "log_every": 1},
}


def env_with(site: Path) -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="250", PYTHONPATH=str(site))


def cli(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jepaflow.cli.main", *args],
        cwd=cwd, env=env_with(site), capture_output=True, text=True, timeout=300,
    )


def rows(text: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip().strip("│").split("│")] for line in text.splitlines()
            if line.strip().startswith("│")]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """``pip install --no-deps --no-build-isolation --target SITE jepaflow-stripes`` from a copy of its source
    (so that the build leaves nothing in the repository)."""
    # --no-build-isolation (no network) builds with the environment's own setuptools.
    pytest.importorskip("setuptools", reason="building jepaflow-stripes offline needs setuptools in the venv")
    base = tmp_path_factory.mktemp("stripes")
    src = base / "src"
    shutil.copytree(PLUGIN_SRC, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = base / "site"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "--quiet", "--target", str(target), str(src)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (target / "jepaflow_stripes" / "masker.py").is_file()
    return target


@pytest.fixture
def recipe(tmp_path) -> Path:
    path = tmp_path / "stripes.yaml"
    path.write_text(yaml.safe_dump({**RECIPE, "output_dir": str(tmp_path / "run")}, sort_keys=False))
    return path


def test_plugins_list_and_show_find_the_installed_package(site, tmp_path):
    done = cli(site, tmp_path, "plugins", "list")
    assert done.returncode == 0, done.stderr
    table = {(r[0], r[1]): r for r in rows(done.stdout) if len(r) == 5}
    assert table[("masker", "stripes")][2:] == ["jepaflow-stripes", "0.1.0", "ok"]
    assert table[("masker", "multiblock")][2] == "jepaflow"

    done = cli(site, tmp_path, "plugins", "show", "stripes")
    assert done.returncode == 0, done.stderr
    assert "package: jepaflow-stripes 0.1.0" in done.stdout
    assert "jepaflow_stripes.masker:StripeMasker" in done.stdout
    fields = {r[0]: r for r in rows(done.stdout) if len(r) == 4}
    assert set(fields) == {"num_targets", "stripe_width", "orientation", "context_ratio"}
    assert fields["orientation"][1:3] == ["Literal['horizontal', 'vertical', 'random']", "'horizontal'"]


def test_validate_and_run_a_recipe_naming_the_plugin(site, recipe, tmp_path):
    done = cli(site, tmp_path, "validate", str(recipe))
    assert done.returncode == 0, done.stderr
    components = {r[0]: r for r in rows(done.stdout) if len(r) == 4}
    assert components["masker"] == ["masker", "stripes", "StripeMasker", "jepaflow-stripes 0.1.0"]
    resolved = yaml.safe_load(done.stdout.split("\n\n")[0])
    assert resolved["masker"] == {"name": "stripes", "num_targets": 2, "stripe_width": 1, "orientation": "random",
                                  "context_ratio": None}

    # Settings that cannot fit the 4x4 patch grid: the plugin's own JepaflowError, exit 2, no traceback.
    done = cli(site, tmp_path, "validate", str(recipe), "--set", "masker.num_targets=4")
    assert done.returncode == 2
    assert "leaving no context" in done.stderr and "fix:" in done.stderr and "Traceback" not in done.stderr
    # A bad field is reported with the plugin's YAML path, like a built-in's.
    done = cli(site, tmp_path, "validate", str(recipe), "--set", "masker.orientation=diagonal")
    assert done.returncode == 2 and "masker.orientation: must be one of" in done.stderr

    out = tmp_path / "run"
    done = cli(site, tmp_path, "run", str(recipe), "--set", "train.max_steps=3", "--output", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    assert (out / "summary.json").is_file()
    # the run folder records which package provided each plugin (provenance of a result)
    plugins = json.loads((out / "env.json").read_text())["plugins"]
    assert plugins["masker"] == {"kind": "masker", "name": "stripes", "class": "jepaflow_stripes.masker:StripeMasker",
                                      "package": "jepaflow-stripes", "version": "0.1.0",
                                      "entry_point": "jepaflow_stripes.masker:StripeMasker"}
    assert plugins["encoder"]["package"] == "jepaflow"
    summary = {r[0]: r[1] for r in rows(done.stdout) if len(r) == 2}
    assert summary["step"] == "3"


def test_the_package_passes_its_own_tests_once_installed(site, tmp_path):
    tests = PLUGIN_SRC / "tests"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path), str(tests)],
        cwd=tmp_path, env=env_with(site), capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:]
    # Installed, the entry-point test runs instead of skipping.
    assert "skipped" not in done.stdout.splitlines()[-1], done.stdout[-500:]
