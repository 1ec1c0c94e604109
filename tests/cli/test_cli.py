"""The ``jepaflow`` command line: user errors (exit 2, one message, no traceback), ``validate``'s parameter
counts, ``plugins list/show`` with broken and colliding third-party plugins, ``masks`` and ``run``.

Subprocesses run ``python -m jepaflow.cli.main`` where the real process matters (tracebacks, entry points of
fake distributions on PYTHONPATH, what ``import`` pulls in); the rest uses typer's in-process CliRunner.
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from jepaflow.cli.main import app
from jepaflow.errors import JepaflowError
from jepaflow.registry import default_registry

BUILTINS = {
    "encoder": ["vit", "timm_vit"],
    "predictor": ["vit_predictor"],
    "masker": ["multiblock"],
    "target_updater": ["ema"],
    "objective": ["ijepa"],
    "dataset": ["image_folder", "fashion_mnist", "digits", "synthetic"],
}

SMALL = {
    "seed": 3,
    "data": {"name": "synthetic", "image_size": 32, "num_train": 32, "num_test": 16},
    "encoder": {"name": "vit", "size": "tiny", "patch_size": 8, "img_size": 32, "depth": 2},
    "predictor": {"name": "vit_predictor", "embed_dim": 32, "depth": 1, "num_heads": 2},
    "masker": {"name": "multiblock", "mode": "fixed", "min_keep": 1},
    "target_updater": {"name": "ema"},
    "objective": {"name": "ijepa"},
    "optim": {"epochs": 2, "warmup_epochs": 1},
    "train": {"batch_size": 8, "num_workers": 0, "progress": False, "device": "cpu", "log_every": 1},
}
SMALL_PLUGINS = [("dataset", "synthetic"), ("encoder", "vit"), ("predictor", "vit_predictor"),
                 ("masker", "multiblock"), ("target_updater", "ema"), ("objective", "ijepa")]

runner = CliRunner()


# ------------------------------------------------------------------------------------------------ helpers
def write_recipe(tmp_path: Path, patch: dict | None = None, name: str = "recipe.yaml") -> Path:
    raw = copy.deepcopy(SMALL)
    raw["output_dir"] = str(tmp_path / "run")
    for section, value in (patch or {}).items():
        if isinstance(value, dict) and isinstance(raw.get(section), dict):
            raw[section].update(value)
        else:
            raw[section] = value
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def cli(*args: str, cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="250")
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "jepaflow.cli.main", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=240,
    )


def invoke(*args: str):
    return runner.invoke(app, list(args), env={"COLUMNS": "250"})


def table_rows(text: str) -> list[list[str]]:
    """Cells of every row of the rich tables in ``text`` (box-drawing separators)."""
    return [[c.strip() for c in line.strip().strip("│").split("│")] for line in text.splitlines()
            if line.strip().startswith("│")]


def fake_distribution(site: Path, name: str, entry_points: dict[str, dict[str, str]], modules: dict[str, str]):
    """A real (metadata-only) installed distribution: ``<name>-0.1.dist-info`` plus its modules."""
    # Wheels escape "-" in the folder name; importlib.metadata reads the name up to the first "-" and keeps
    # one distribution per name, so "pkg-a-0.1.dist-info" and "pkg-b-0.1.dist-info" would both be "pkg".
    info = site / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    eps = "".join(f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in items.items()) + "\n"
                  for group, items in entry_points.items())
    (info / "entry_points.txt").write_text(eps)
    for mod, source in modules.items():
        (site / f"{mod}.py").write_text(source)


@pytest.fixture(scope="module")
def small_plugins() -> None:
    """Fail early, naming them, if a built-in plugin of the small recipe cannot be imported."""
    broken = []
    for kind, name in SMALL_PLUGINS:
        try:
            default_registry().get(kind, name)
        except JepaflowError as exc:
            broken.append(f"{kind} {name}: {exc.problem}")
    assert not broken, "built-in plugins failed to import: " + "; ".join(broken)


# ------------------------------------------------------------------------------------------------ basics
def test_import_jepaflow_and_the_cli_do_not_import_torch(tmp_path):
    code = (
        "import sys, jepaflow, jepaflow.cli.main, jepaflow.config, jepaflow.registry\n"
        "heavy = [m for m in ('torch', 'timm', 'numpy', 'matplotlib') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_version_and_usage_errors():
    from jepaflow import __version__

    result = invoke("--version")
    assert result.exit_code == 0 and result.stdout.strip() == f"jepaflow {__version__}"
    assert invoke("validate").exit_code == 2  # missing RECIPE
    assert invoke("run", "r.yaml", "--no-such-option").exit_code == 2
    assert invoke("frobnicate").exit_code == 2


# ------------------------------------------------------------------------------------------------ user errors
def test_broken_yaml_exits_2_with_line_and_column_and_no_traceback(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("seed: 0\ndata:\n  name: synthetic\n   image_size: 32\n")
    done = cli("validate", str(path), cwd=tmp_path)
    assert done.returncode == 2
    assert "line 4, column 14" in done.stderr and "not valid YAML" in done.stderr
    assert "fix:" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_missing_recipe_file_exits_2():
    result = invoke("validate", "/no/such/recipe.yaml")
    assert result.exit_code == 2 and "no recipe at '/no/such/recipe.yaml'" in result.stderr


def test_unknown_plugin_name_lists_the_installed_ones(tmp_path):
    result = invoke("validate", str(write_recipe(tmp_path, {"encoder": {"name": "vitt"}})))
    assert result.exit_code == 2
    assert "encoder.name: no encoder plugin named 'vitt' (installed: timm_cnn, timm_vit, vit)" in result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_three_problems_in_three_sections_make_one_message(tmp_path, small_plugins):
    path = write_recipe(tmp_path, {"masker": {"bogus_field": 1}, "optim": {"lr": "fast"}, "train": {"batch_size": 0}})
    result = invoke("validate", str(path))
    assert result.exit_code == 2
    err = result.stderr
    assert err.count("error:") == 1 and f"3 problem(s) in {path}:" in err
    assert re.search(r"^\s+optim\.lr: Input should be a valid number.*'fast'", err, re.M)
    assert re.search(r"^\s+train\.batch_size: Input should be greater than or equal to 1", err, re.M)
    assert re.search(r"^\s+masker\.bogus_field: unknown field", err, re.M)
    assert result.stdout == ""


def test_bad_set_syntax_exits_2(tmp_path):
    path = write_recipe(tmp_path)
    result = invoke("validate", str(path), "--set", "optim.lr", "--set", "seed.x=1")
    assert result.exit_code == 2
    assert "2 problem(s) in --set" in result.stderr
    assert "optim.lr: an override is PATH=VALUE" in result.stderr and "seed: is not a section" in result.stderr


# ------------------------------------------------------------------------------------------------ validate
def test_validate_prints_the_resolved_recipe_and_the_real_parameter_counts(tmp_path, small_plugins):
    from jepaflow.config import load_recipe
    from jepaflow.engine.build import build_objective

    path = write_recipe(tmp_path)
    result = invoke("validate", str(path), "--set", "masker.num_targets=2", "-s", "predictor.depth=2")
    assert result.exit_code == 0, result.stderr
    # The resolved recipe: overrides applied, defaults filled, and it loads back to the same recipe.
    yaml_text = result.stdout.split("\n\n")[0]
    resolved = yaml.safe_load(yaml_text)
    recipe = load_recipe(path, overrides=["masker.num_targets=2", "predictor.depth=2"])
    assert resolved == recipe.to_dict()
    assert resolved["masker"]["num_targets"] == 2 and resolved["masker"]["target_scale"] == [0.15, 0.2]

    # Counts printed (built on the meta device) = counts of the model really built on the CPU.
    objective = build_objective(recipe)
    rows = {r[0]: r for r in table_rows(result.stdout) if len(r) == 5}
    as_int = lambda s: int(s.replace(",", ""))  # noqa: E731
    for name, child in objective.named_children():
        trainable = sum(p.numel() for p in child.parameters() if p.requires_grad)
        frozen = sum(p.numel() for p in child.parameters() if not p.requires_grad)
        assert [as_int(x) for x in rows[name][2:]] == [trainable, frozen, trainable + frozen], name
    total = sum(p.numel() for p in objective.parameters())
    trainable = sum(p.numel() for p in objective.parameters() if p.requires_grad)
    assert as_int(rows["total"][4]) == total and as_int(rows["total"][2]) == trainable
    assert f"total parameters {total:,} (trainable {trainable:,}, frozen {total - trainable:,})" in result.stdout
    assert total > 0 and trainable < total  # I-JEPA's target encoder is frozen


def test_validate_reports_a_masker_that_does_not_fit_the_grid(tmp_path, small_plugins):
    # A 4x4 patch grid cannot host blocks that must keep more than 100 patches.
    result = invoke("validate", str(write_recipe(tmp_path, {"masker": {"min_keep": 100}})))
    assert result.exit_code == 2 and "masker" in result.stderr and "Traceback" not in result.output


# ------------------------------------------------------------------------------------------------ plugins
def test_plugins_list_shows_every_builtin():
    result = invoke("plugins", "list")
    assert result.exit_code == 0, result.output
    rows = {(r[0], r[1]): r for r in table_rows(result.stdout) if len(r) == 5}
    for kind, names in BUILTINS.items():
        for name in names:
            assert (kind, name) in rows, f"{kind} {name} missing"
            assert rows[(kind, name)][2:4] == ["jepaflow", __import__("jepaflow").__version__]
    broken = [f"{k} {n}: {r[4]}" for (k, n), r in rows.items() if r[2] == "jepaflow" and r[4] != "ok"]
    assert not broken, "built-in plugins failed to import: " + "; ".join(broken)


def test_plugins_show_describes_the_config_fields(small_plugins):
    result = invoke("plugins", "show", "multiblock")
    assert result.exit_code == 0, result.output
    out = result.stdout
    from jepaflow.maskers.multiblock import MultiBlockMasker

    first_paragraph = " ".join(MultiBlockMasker.__doc__.strip().split("\n\n")[0].split())
    assert first_paragraph in " ".join(out.split())
    assert "package: jepaflow" in out and "jepaflow.maskers.multiblock:MultiBlockMasker" in out
    rows = {r[0]: r for r in table_rows(out) if len(r) == 4}
    assert rows["num_targets"][1:3] == ["int ≥ 1, ≤ 1024", "4"]  # the type with its range
    assert rows["num_targets"][3] == MultiBlockMasker.Config.model_fields["num_targets"].description
    assert rows["mode"][1] == "Literal['official', 'fixed']" and rows["mode"][2] == "'official'"
    assert rows["target_scale"][1:3] == ["tuple[float, float]", "(0.15, 0.2)"]
    assert set(rows) == set(MultiBlockMasker.Config.model_fields)

    assert invoke("plugins", "show", "multiblock", "--kind", "encoder").exit_code == 2
    assert invoke("plugins", "show", "multiblock", "--kind", "maskr").exit_code == 2
    missing = invoke("plugins", "show", "nosuchplugin")
    assert missing.exit_code == 2 and "multiblock" in missing.stderr and "vit" in missing.stderr


@pytest.fixture(scope="module")
def fake_site(tmp_path_factory) -> Path:
    """A PYTHONPATH folder with three fake distributions: one whose module fails to import, two that claim
    the same masker name."""
    site = tmp_path_factory.mktemp("site")
    fake_distribution(
        site, "brokenpkg", {"jepaflow.maskers": {"broken": "brokenpkg:BrokenMasker"}},
        {"brokenpkg": "raise ImportError('brokenpkg needs the missing module zzz_not_installed')\n"},
    )
    masker_src = (
        "from jepaflow.interfaces import Masker\n"
        "class DupeMasker(Masker):\n"
        "    '''A masker of package {p}.'''\n"
        "    def __call__(self, batch_size, grid_size, generator):\n"
        "        raise NotImplementedError\n"
    )
    for pkg in ("pkg_alpha", "pkg_beta"):
        fake_distribution(
            site, pkg.replace("_", "-"), {"jepaflow.maskers": {"dupe": f"{pkg}:DupeMasker"}},
            {pkg: masker_src.format(p=pkg)},
        )
    return site


def test_a_broken_plugin_is_reported_and_the_others_still_work(tmp_path, fake_site):
    done = cli("plugins", "list", cwd=tmp_path, pythonpath=fake_site)
    assert done.returncode == 0, done.stderr
    rows = {(r[0], r[1]): r for r in table_rows(done.stdout) if len(r) == 5}
    kind, name, package, version, status = rows[("masker", "broken")]
    assert (package, version) == ("brokenpkg", "0.1")
    assert status == "failed to import: ImportError: brokenpkg needs the missing module zzz_not_installed"
    assert rows[("masker", "multiblock")][4] == "ok"
    assert all(rows[("encoder", n)][2] == "jepaflow" for n in BUILTINS["encoder"])
    assert "Traceback" not in done.stdout + done.stderr

    # A recipe naming it: exit 2, the message names the package to fix.
    recipe = write_recipe(tmp_path, {"masker": {"name": "broken"}})
    done = cli("validate", str(recipe), cwd=tmp_path, pythonpath=fake_site)
    assert done.returncode == 2
    assert "masker.name: masker plugin 'broken' from package brokenpkg 0.1 failed to import" in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.count("fix:") == 1 and "fix: fix or reinstall brokenpkg" in done.stderr  # one fix, its own

    # `plugins show` does give the traceback, for the plugin's author.
    done = cli("plugins", "show", "broken", cwd=tmp_path, pythonpath=fake_site)
    assert done.returncode == 0
    assert "Traceback" in done.stdout and "zzz_not_installed" in done.stdout and "brokenpkg" in done.stdout


def test_a_name_collision_names_both_packages(tmp_path, fake_site):
    done = cli("plugins", "list", cwd=tmp_path, pythonpath=fake_site)
    rows = {(r[0], r[1]): r for r in table_rows(done.stdout) if len(r) == 5}
    status = rows[("masker", "dupe")][4]
    assert status.startswith("name collision")
    assert "pkg-alpha" in status and "pkg-beta" in status

    recipe = write_recipe(tmp_path, {"masker": {"name": "dupe"}})
    done = cli("validate", str(recipe), cwd=tmp_path, pythonpath=fake_site)
    assert done.returncode == 2
    assert "masker plugin name 'dupe' is registered by more than one package" in done.stderr
    assert "pkg-alpha (pkg_alpha:DupeMasker)" in done.stderr and "pkg-beta (pkg_beta:DupeMasker)" in done.stderr

    done = cli("plugins", "show", "dupe", cwd=tmp_path, pythonpath=fake_site)
    assert done.returncode == 0
    assert "name collision" in done.stdout and "pkg-alpha" in done.stdout and "pkg-beta" in done.stdout


def test_a_masker_that_breaks_the_contract_is_named_by_validate_masks_and_run(tmp_path):
    """A third-party masker whose context indices run past the grid: before, `validate` said ok and `run` died at
    step 0 inside a gather; now all three commands stop with one message naming the plugin, its package and the
    rule, exit 2."""
    site = tmp_path / "site"
    fake_distribution(
        site, "offgrid-masks", {"jepaflow.maskers": {"offgrid": "offgrid_masks:OffGridMasker"}},
        {"offgrid_masks": (
            "import torch\n"
            "from jepaflow.interfaces import MaskBatch, Masker\n"
            "class OffGridMasker(Masker):\n"
            "    def __init__(self, config):\n"
            "        self.config = config\n"
            "    def __call__(self, batch_size, grid_size, generator):\n"
            "        n = grid_size[0] * grid_size[1]\n"
            "        ctx = torch.arange(1, n // 2 + 1).repeat(batch_size, 1)  # the last index is n // 2 ...\n"
            "        ctx[:, -1] = n  # ... moved one past the grid\n"
            "        tgt = torch.zeros(batch_size, 1, 1, dtype=torch.long)\n"
            "        return MaskBatch(context=ctx, targets=tgt)\n"
        )},
    )
    recipe = write_recipe(tmp_path)
    recipe.write_text(recipe.read_text().replace("name: multiblock", "name: offgrid").replace("mode: fixed", "")
                      .replace("min_keep: 1", ""))
    expected = ("masker 'offgrid' (package offgrid-masks 0.1) breaks the masker contract: context holds patch "
                "index 16, outside [0, 16) for the 4x4 grid")
    for args in (["validate", str(recipe)], ["masks", str(recipe), "--output", str(tmp_path / "m.png")],
                 ["run", str(recipe), "--set", "train.max_steps=1"]):
        done = cli(*args, cwd=tmp_path, pythonpath=site)
        assert done.returncode == 2, (args, done.stdout[-2000:], done.stderr[-2000:])
        assert expected in " ".join(done.stderr.split()), (args, done.stderr)
        assert "Traceback" not in done.stderr + done.stdout
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()


# ------------------------------------------------------------------------------------------------ masks, run
def test_masks_prints_the_statistics_of_the_recipe_masks_and_writes_a_png(tmp_path, small_plugins):
    import torch

    from jepaflow.config import load_recipe
    from jepaflow.engine.build import build_masker
    from jepaflow.maskers.stats import mask_statistics

    path = write_recipe(tmp_path)
    png = tmp_path / "out" / "masks.png"
    result = invoke("masks", str(path), "--output", str(png), "--batch-size", "6", "--batches", "2")
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The same masks, sampled here from the recipe's seed, give the printed numbers.
    recipe = load_recipe(path)
    gen = torch.Generator().manual_seed(recipe.seed)
    masker = build_masker(recipe)
    expected = mask_statistics([masker(6, (4, 4), gen) for _ in range(2)], (4, 4))
    rows = {r[0]: r[1] for r in table_rows(result.stdout) if len(r) == 2}
    assert int(rows["num images"]) == 12 == expected["num_images"]
    assert int(rows["context min"]) == expected["context_min"]
    assert int(rows["context max"]) == expected["context_max"]
    assert float(rows["context mean"]) == pytest.approx(expected["context_mean"], rel=1e-3)
    assert float(rows["target coverage"]) == pytest.approx(expected["target_coverage"], rel=1e-3)
    assert float(rows["overlap"]) == pytest.approx(expected["overlap"], abs=1e-4)
    assert "4x4 patch grid" in result.stdout


def test_run_trains_and_user_errors_exit_2(tmp_path, small_plugins):
    path = write_recipe(tmp_path)
    out = tmp_path / "elsewhere"
    result = invoke("run", str(path), "--set", "train.max_steps=2", "--output", str(out))
    assert result.exit_code == 0, result.output
    rows = {r[0]: r[1] for r in table_rows(result.stdout) if len(r) == 2}
    assert rows["step"] == "2" and rows["run_dir"] == str(out)
    assert (out / "summary.json").is_file()

    # A data folder that does not exist is a user error, not a traceback.
    bad = write_recipe(
        tmp_path, {"data": {"name": "image_folder", "root": str(tmp_path / "nope"), "image_size": 32}}, "bad.yaml"
    )
    result = invoke("run", str(bad), "--set", "train.max_steps=1")
    assert result.exit_code == 2, result.output
    assert "error:" in result.stderr and "fix:" in result.stderr
