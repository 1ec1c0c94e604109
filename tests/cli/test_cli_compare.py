"""``jepaflow sweep`` then ``jepaflow compare`` on two tiny sweeps (two recipes x 2 seeds, 4 steps each, probed):
the table, the CSV and the PNGs; intervals equal to the runs' own probe numbers; the floors; the caches a second
compare reads; the refusal of mixed probe settings and ``--allow-mixed``."""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from conftest import TINY_RECIPE, merge
from typer.testing import CliRunner

from jepaflow.cli.main import app
from jepaflow.compare.stats import mean_ci

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "compare"))
from fake_runs import assert_plots_linked  # noqa: E402

runner = CliRunner()


# 128 train / 64 test grey 16 px images (256 pixels: a quick raw-pixel floor), batch 32: 4 steps; probes with a
# short C grid; the random-init baseline
BASE = {"data": {"num_train": 128, "num_test": 64, "image_size": 16, "channels": 1},
        "encoder": {"img_size": 16, "patch_size": 4, "in_chans": 1},
        "optim": {"epochs": 1, "warmup_epochs": 0.25},
        "train": {"log_every": 1, "monitor_every": 2},
        "probe": {"enabled": True, "kinds": ["knn", "linear"], "linear_C": [0.1, 1.0], "random_init_baseline": True}}


def invoke(*args: str):
    return runner.invoke(app, list(args), env={"COLUMNS": "250"})


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    """Two sweeps into two folders (I-JEPA at two learning rates, then a recipe that cannot find its data, to
    check that a failure is reported and the others still run): ``(root, sweep A, sweep B, sweep A's output)``."""
    root = tmp_path_factory.mktemp("sweeps")
    lr_a = root / "ijepa_lr1.yaml"
    lr_a.write_text(yaml.safe_dump(merge(TINY_RECIPE, BASE)))
    lr_b = root / "ijepa_lr2.yaml"
    lr_b.write_text(yaml.safe_dump(merge(TINY_RECIPE, merge(BASE, {"optim": {"lr": 3.0e-3}}))))
    broken = root / "no_data.yaml"
    no_data = merge(TINY_RECIPE, {})
    no_data["data"] = {"name": "image_folder", "root": str(root / "nope"), "image_size": 32}
    broken.write_text(yaml.safe_dump(no_data))
    with pytest.MonkeyPatch.context() as mp:  # the children inherit these
        mp.setenv("OMP_NUM_THREADS", "1")
        mp.setenv("JEPAFLOW_CACHE", str(root / "cache"))
        res_a = invoke("sweep", str(lr_a), str(broken), "--seeds", "2", "--output", str(root / "a"))
        res_b = invoke("sweep", str(lr_b), "--seeds", "2", "--output", str(root / "b"))
    return root, res_a, res_b


def test_the_sweeps_ran_and_reported_the_failure(sweeps):
    root, res_a, res_b = sweeps
    assert res_b.exit_code == 0, res_b.output
    assert res_a.exit_code == 1, res_a.output  # a run failed; the sweep went on
    assert "failed no_data/seed0 (exit 2): error: data folder" in res_a.output
    assert "not started no_data/seed1: another seed of this recipe failed on bad input" in res_a.output
    manifest = json.loads((root / "a" / "sweep.json").read_text())
    by = {r["run_dir"]: r for r in manifest["runs"]}
    assert by["ijepa_lr1/seed0"]["state"] == by["ijepa_lr1/seed1"]["state"] == "done"
    assert by["no_data/seed0"]["outcome"] == "failed" and "does not exist" in by["no_data/seed0"]["error"]
    assert by["no_data/seed1"]["outcome"] == "not started"
    for seed in (0, 1):
        recipe = yaml.safe_load((root / "a" / "ijepa_lr1" / f"seed{seed}" / "recipe.yaml").read_text())
        assert recipe["seed"] == seed
        assert set(by[f"ijepa_lr1/seed{seed}"]["probe"]) >= {"knn", "linear"}


@pytest.fixture(scope="module")
def compared(sweeps):
    """``jepaflow compare`` of both sweeps into one folder: ``(root, output folder, result)``."""
    root = sweeps[0]
    out = root / "cmp"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JEPAFLOW_CACHE", str(root / "cache"))
        res = invoke("compare", str(root / "a"), str(root / "b"), "--output", str(out))
    return root, out, res


def test_compare_two_sweeps_writes_the_table_the_csv_and_the_plots(compared):
    root, out, res = compared
    assert res.exit_code == 0, res.output
    md = (out / "compare.md").read_text()
    assert_plots_linked(out, md)
    rows = {r["label"]: r for r in csv.DictReader((out / "compare.csv").open())}
    methods = {k: v for k, v in rows.items() if v["kind"] == "method"}
    assert set(methods) == {"ijepa [optim.lr=0.001]", "ijepa [optim.lr=0.003]"}
    # each method's interval is the Student-t interval of its two runs' own probe.json accuracies
    for label, folder in (("ijepa [optim.lr=0.001]", root / "a" / "ijepa_lr1"), ("ijepa [optim.lr=0.003]",
                                                                                 root / "b" / "ijepa_lr2")):
        accs = [json.loads((folder / f"seed{s}" / "probe.json").read_text())["probes"]["linear"]["accuracy"]
                for s in (0, 1)]
        iv = mean_ci(accs)
        row = methods[label]
        assert int(row["n"]) == 2 and row["seeds"] == "0 1"
        assert float(row["linear_mean"]) == pytest.approx(iv.mean)
        assert float(row["linear_half_width"]) == pytest.approx(iv.half_width)
        assert float(row["steps"]) == 4 and float(row["images_seen"]) == 128 and float(row["epochs"]) == 1
        assert float(row["step_flops"]) > 0
        assert float(row["train_flops_per_run"]) == pytest.approx(4 * float(row["step_flops"]))
        assert float(row["train_seconds_per_run"]) > 0
        assert row["role"] == "target" and row["layers"] == "last"
    # a "best" mark only where the intervals are apart
    for probe in ("linear", "knn"):
        a, b = methods.values()
        apart = float(a[f"{probe}_ci_low"]) > float(b[f"{probe}_ci_high"]) or \
            float(b[f"{probe}_ci_low"]) > float(a[f"{probe}_ci_high"])
        marks = {a[f"{probe}_mark"], b[f"{probe}_mark"]}
        assert marks == ({"best", ""} if apart else {"tied"})
    # the floors: the runs' random-init baselines (2 initializations, shared by both sweeps) and raw pixels
    floors = {v["kind"]: v for v in rows.values() if v["kind"] != "method"}
    assert int(floors["random_init"]["n"]) == 2
    assert floors["floor"]["label"] == "raw pixels" and int(floors["floor"]["n"]) == 1
    assert (out / "floors" / "pixels" / "probe.json").is_file()
    assert "## Verdicts" in md and "| method | backbone | encoder |" in md
    assert "`" + str(root / "a" / "ijepa_lr1" / "seed0") + "`" in md


def test_a_second_compare_reads_its_caches(compared, monkeypatch):
    root, out, res = compared
    assert res.exit_code == 0, res.output
    first = (out / "compare.csv").read_text()

    def fail(*args, **kwargs):
        raise AssertionError("recomputed although cached")

    monkeypatch.setattr("jepaflow.compare.flops.step_flops", fail)
    monkeypatch.setattr("jepaflow.compare.compute_pixel_floor", fail)
    res = invoke("compare", str(root / "a"), str(root / "b"), "--output", str(out))
    assert res.exit_code == 0, res.output
    assert (out / "compare.csv").read_text() == first


def test_mixed_probe_settings_are_refused_then_flagged_with_allow_mixed(sweeps, tmp_path):
    root = sweeps[0]
    mixed = tmp_path / "mixed"
    shutil.copytree(root / "b" / "ijepa_lr2", mixed / "ijepa_lr2")
    shutil.copytree(root / "a" / "ijepa_lr1", mixed / "ijepa_lr1")
    probe = mixed / "ijepa_lr2" / "seed1" / "probe.json"
    doc = json.loads(probe.read_text())
    doc["settings"]["knn_k"] = 5  # as if this run had been probed again with --set probe.knn_k=5
    probe.write_text(json.dumps(doc))
    res = invoke("compare", str(mixed), "--output", str(tmp_path / "out"), "--no-pixel-floor", "--no-flops")
    assert res.exit_code == 2
    assert "settings.knn_k is 5 in " + str(mixed / "ijepa_lr2" / "seed1") in " ".join(res.output.split())
    assert "--allow-mixed" in res.output
    assert not (tmp_path / "out" / "compare.md").exists()
    res = invoke("compare", str(mixed), "--output", str(tmp_path / "out"), "--no-pixel-floor", "--no-flops",
                 "--allow-mixed")
    assert res.exit_code == 0, res.output
    md = (tmp_path / "out" / "compare.md").read_text()
    assert "## Mixed protocols (--allow-mixed)" in md and "not judged" in md and "** best" not in md
    rows = list(csv.DictReader((tmp_path / "out" / "compare.csv").open()))
    assert sorted(r["protocol"] for r in rows if r["kind"] == "method") == ["P1", "P1", "P2"]


def test_compare_of_nothing_is_one_message(tmp_path):
    (tmp_path / "empty").mkdir()
    res = invoke("compare", str(tmp_path / "empty"))
    assert res.exit_code == 2 and "found no finished, probed run" in res.output
    res = invoke("compare", str(tmp_path / "missing"))
    assert res.exit_code == 2 and "does not exist" in res.output


def test_default_output_folder(sweeps):
    from jepaflow.compare import default_output

    assert default_output([sweeps[0] / "b"]) == sweeps[0] / "b" / "compare"
    assert default_output([Path("x"), Path("y")]) == Path("compare")
