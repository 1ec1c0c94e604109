"""The layering of docs/architecture.md is enforced: `lint-imports` keeps every contract of pyproject.toml, and
each contract breaks when a module breaks its rule (checked on a copy of the package with violating modules)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: import-linter depends on tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
CONTRACTS = {
    c["id"]: c["name"]
    for c in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
}


def lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    """`lint-imports` of the venv running the tests, over the `jepaflow` package found first on PYTHONPATH=cwd."""
    exe = Path(sys.executable).parent / "lint-imports"
    if not exe.exists():
        pytest.fail("lint-imports is not installed: pip install import-linter (it is in jepaflow's test extra)")
    env = {**os.environ, "PYTHONPATH": str(cwd), "COLUMNS": "400", "NO_COLOR": "1"}
    return subprocess.run([str(exe), "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def verdicts(output: str) -> dict[str, str]:
    """Contract id -> "KEPT" / "BROKEN" from lint-imports' summary lines ("<name> KEPT ...")."""
    found = {}
    for cid, name in CONTRACTS.items():
        line = next((ln for ln in output.splitlines() if ln.startswith(name + " ")), "")
        found[cid] = line[len(name) + 1:].split()[0] if line else "missing"
    return found


def test_the_package_keeps_every_import_contract():
    assert set(CONTRACTS) == {
        "engine-imports-no-method", "methods-import-no-engine", "plugin-kinds-independent", "layers-import-no-plugin",
        "probes-below-loop-and-cli",
        "compare-imports-no-method", "nothing-below-imports-compare",
    }
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert set(verdicts(result.stdout).values()) == {"KEPT"}, result.stdout


# one violating module per contract; two imports sit inside functions (lazy imports count as imports)
VIOLATIONS = {
    "engine-imports-no-method": ("engine/_bad.py", "def build():\n    from jepaflow.objectives import ijepa\n"),
    "methods-import-no-engine": ("encoders/_bad.py", "from jepaflow.engine import trainer\n"),
    "plugin-kinds-independent": ("predictors/_bad.py", "from jepaflow.encoders.vit import VisionTransformerEncoder\n"),
    "layers-import-no-plugin": ("layers/_bad.py", "def f():\n    import jepaflow.maskers.multiblock\n"),
    "probes-below-loop-and-cli": ("probes/_bad.py", "from jepaflow.engine.trainer import train\n"),
    "compare-imports-no-method": ("compare/_bad.py", "from jepaflow.objectives import ijepa\n"),
    "nothing-below-imports-compare": ("target_updaters/_bad.py", "def f():\n    from jepaflow.sweep import plan\n"),
}


def test_each_contract_breaks_on_a_violating_module(tmp_path):
    shutil.copytree(ROOT / "jepaflow", tmp_path / "jepaflow", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    clean = lint_imports(tmp_path)
    assert clean.returncode == 0, clean.stdout + clean.stderr  # the copy is what is linted, and it is clean
    for path, source in VIOLATIONS.values():
        (tmp_path / "jepaflow" / path).write_text(source)
    broken = lint_imports(tmp_path)
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert verdicts(broken.stdout) == dict.fromkeys(CONTRACTS, "BROKEN"), broken.stdout
    # the report names the offending import
    assert "jepaflow.engine._bad -> jepaflow.objectives.ijepa" in broken.stdout
    assert "jepaflow.layers._bad -> jepaflow.maskers.multiblock" in broken.stdout
    assert "jepaflow.compare._bad -> jepaflow.objectives" in broken.stdout
