"""``jepaflow compare`` end to end on two hand-made sweeps (run folders as ``jepaflow sweep`` lays them out, with
probe.json documents of schema jepaflow-probe v1 whose numbers the test chooses): the command writes the table,
the CSV and the four PNGs, marks a win only where the intervals are apart, counts the training FLOPs of the real
recipes, refuses mixed probe settings naming the difference and flags them with ``--allow-mixed``, and refuses an
output folder it cannot write before reading anything. Fast: no training (the same pipeline over real tiny
sweeps is test_cli_compare.py)."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from jepaflow.cli.main import app
from jepaflow.compare.stats import mean_ci

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "compare"))
from fake_runs import SETTINGS, assert_plots_linked, make_floor, make_run  # noqa: E402

runner = CliRunner()
# linear: A's interval lies above B's (a win); knn: A's mean is higher but the intervals overlap (no win)
A = {"linear": [0.90, 0.91, 0.92], "knn": [0.80, 0.85, 0.90]}
B = {"linear": [0.80, 0.81, 0.82], "knn": [0.82, 0.84, 0.86]}


def invoke(*args: str):
    return runner.invoke(app, list(args), env={"COLUMNS": "250"})


def two_sweeps(root: Path, **b_kwargs) -> tuple[Path, Path]:
    """Sweep folders ``root/a`` (I-JEPA, lr 1e-3) and ``root/b`` (I-JEPA, lr 2e-3), 3 seeds each."""
    for seed in range(3):
        make_run(root / "a", "ijepa_lr1", seed, {k: v[seed] for k, v in A.items()},
                 baseline={"linear": 0.50 + seed / 100, "knn": 0.40}, baseline_hash=f"sha256:init{seed}")
        make_run(root / "b", "ijepa_lr2", seed, {k: v[seed] for k, v in B.items()},
                 recipe_patch={"optim": {"lr": 0.002}},
                 baseline={"linear": 0.50 + seed / 100, "knn": 0.40}, baseline_hash=f"sha256:init{seed}",
                 **b_kwargs)
    return root / "a", root / "b"


def test_compare_of_two_sweeps_writes_table_csv_and_plots(tmp_path):
    a, b = two_sweeps(tmp_path)
    make_floor(tmp_path, "pixels", {"linear": 0.84, "knn": 0.85})
    out = tmp_path / "cmp"
    res = invoke("compare", str(a), str(b), str(tmp_path / "pixels"), "--output", str(out), "--no-pixel-floor")
    assert res.exit_code == 0, res.output
    md = (out / "compare.md").read_text()
    assert_plots_linked(out, md)
    rows = {r["label"]: r for r in csv.DictReader((out / "compare.csv").open())}
    lr1, lr2 = rows["ijepa [optim.lr=0.001]"], rows["ijepa [optim.lr=0.002]"]
    for row, accs in ((lr1, A), (lr2, B)):
        assert row["kind"] == "method" and int(row["n"]) == 3 and row["seeds"] == "0 1 2"
        for probe in ("linear", "knn"):
            iv = mean_ci(accs[probe])
            assert float(row[f"{probe}_mean"]) == pytest.approx(iv.mean)
            assert float(row[f"{probe}_ci_low"]) == pytest.approx(iv.low)
            assert float(row[f"{probe}_ci_high"]) == pytest.approx(iv.high)
        # FLOPs of the real recipe's step (the tiny ViT of fake_runs.RECIPE), times its 16 steps
        assert float(row["step_flops"]) > 1e6
        assert float(row["train_flops_per_run"]) == pytest.approx(16 * float(row["step_flops"]))
    assert lr1["linear_mark"] == "best" and lr2["linear_mark"] == ""
    assert lr1["knn_mark"] == lr2["knn_mark"] == "tied"
    assert "* linear: **ijepa [optim.lr=0.001]** is best" in md
    assert "no winner: tied at the top" in md and md.count("** best") == 1
    assert rows["raw pixels"]["kind"] == "floor"
    ri = next(r for r in rows.values() if r["kind"] == "random_init")
    assert int(ri["n"]) == 3  # three initializations, shared by both sweeps: counted once each
    assert "linear: ijepa [optim.lr=0.001] is best" in " ".join(res.output.split())


def test_mixed_settings_are_refused_naming_the_difference_then_flagged(tmp_path):
    a, b = two_sweeps(tmp_path, settings={**SETTINGS, "knn_k": 5})
    out = tmp_path / "cmp"
    res = invoke("compare", str(a), str(b), "--output", str(out), "--no-pixel-floor", "--no-flops")
    assert res.exit_code == 2
    text = " ".join(res.output.split())
    assert "error:" in text and "settings.knn_k is 5 in " + str(b / "ijepa_lr2" / "seed") in text
    assert "fix:" in text and "--allow-mixed" in text
    assert not (out / "compare.md").exists()
    res = invoke("compare", str(a), str(b), "--output", str(out), "--no-pixel-floor", "--no-flops", "--allow-mixed")
    assert res.exit_code == 0, res.output
    md = (out / "compare.md").read_text()
    assert "## Mixed protocols (--allow-mixed)" in md and "knn_k" in md and "** best" not in md
    rows = [r for r in csv.DictReader((out / "compare.csv").open()) if r["kind"] == "method"]
    assert sorted(r["protocol"] for r in rows) == ["P1", "P2"]
    assert all(r["linear_mark"] == "" for r in rows)  # no winner across protocols, even for separated intervals


def test_an_output_folder_that_cannot_be_written_is_refused_before_reading(tmp_path):
    a, _ = two_sweeps(tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    res = invoke("compare", str(a), "--output", str(blocker / "cmp"), "--no-pixel-floor", "--no-flops")
    assert res.exit_code == 2
    text = " ".join(res.output.split())
    assert "goes through " + str(blocker) in text and "fix:" in text
