"""The comparison table on hand-made runs: rows per method over seeds, intervals and marks, floors and random-init
rows, refusal of mixed protocols (and --allow-mixed), compare.md and compare.csv."""

from __future__ import annotations

import csv
import io

import pytest
from fake_runs import SETTINGS, make_floor, make_run

from jepaflow.compare.records import CompareError, discover
from jepaflow.compare.stats import mean_ci
from jepaflow.compare.table import build, csv_text, fmt_interval, markdown

A = {"seeds": [0.90, 0.91, 0.92], "knn": [0.80, 0.85, 0.90]}
B = {"seeds": [0.80, 0.81, 0.82], "knn": [0.82, 0.84, 0.86]}


def two_methods(root, a=A, b=B, **kwargs):
    for seed in range(3):
        make_run(root, "ijepa", seed, {"linear": a["seeds"][seed], "knn": a["knn"][seed]},
                 baseline={"linear": 0.5 + seed / 100, "knn": 0.4}, baseline_hash=f"sha256:init{seed}", **kwargs)
        make_run(root, "mae", seed, {"linear": b["seeds"][seed], "knn": b["knn"][seed]},
                 recipe_patch={"objective": {"name": "mae"}}, role="context",
                 baseline={"linear": 0.5 + seed / 100, "knn": 0.4}, baseline_hash=f"sha256:init{seed}")


def test_rows_intervals_and_marks(tmp_path):
    two_methods(tmp_path)
    make_floor(tmp_path, "floors/pixels", {"linear": 0.84, "knn": 0.85})
    cmp = build(discover([tmp_path]))
    by = {r.label: r for r in cmp.rows}
    assert set(by) == {"ijepa", "mae", "random init (vit tiny (width 48, depth 2, patch 8))", "raw pixels"}
    ij, mae = by["ijepa"], by["mae"]
    assert ij.seeds == [0, 1, 2] and ij.n == 3 and ij.role == "target" and mae.role == "context"
    assert ij.intervals["linear"] == mean_ci(A["seeds"])
    # linear: ijepa's interval [0.8852, 0.9348] lies above mae's [0.7852, 0.8348]: a win
    assert ij.marks["linear"] == "best" and "linear" not in mae.marks
    assert cmp.verdicts["linear"].best == "ijepa"
    # knn: ijepa's mean is higher (0.85 > 0.84) but the intervals overlap: tied, no win
    assert ij.intervals["knn"].mean > mae.intervals["knn"].mean
    assert cmp.verdicts["knn"].best is None and ij.marks["knn"] == mae.marks["knn"] == "tied"
    # the random-init row: both methods' baselines share 3 initializations (same hashes): n = 3, not 6
    ri = by["random init (vit tiny (width 48, depth 2, patch 8))"]
    assert ri.kind == "random_init" and ri.n == 3 and ri.intervals["linear"] == mean_ci([0.50, 0.51, 0.52])
    assert by["raw pixels"].kind == "floor" and by["raw pixels"].n == 1
    assert ij.epochs == 2.0 and ij.images_seen == 16 * 32 and ij.wall_clock_s == pytest.approx(8.0)


def test_markdown_never_shows_an_overlap_as_a_win(tmp_path):
    two_methods(tmp_path)
    make_floor(tmp_path, "floors/pixels", {"linear": 0.84, "knn": 0.85})
    cmp = build(discover([tmp_path]))
    md = markdown(cmp)
    assert md.count("** best") == 1  # the one separated difference (linear), nothing else
    assert f"| {fmt_interval(mean_ci(A['seeds']), 'best')} |" in md
    assert "* linear: **ijepa** is best" in md
    assert "* knn: no winner: tied at the top: ijepa, mae (their 95% intervals overlap)" in md
    # against the pixel floor (one value): ijepa's linear interval [88.5, 93.5] lies above 84, mae's [78.5, 83.5]
    # below it; for knn (85) both intervals contain it
    assert "against raw pixels (84.00 (n=1)): above: ijepa; below: mae\n" in md
    assert "against raw pixels (85.00 (n=1)): above: none; below: none; not distinguishable: ijepa, mae" in md
    assert "`" + str(tmp_path / "ijepa" / "seed0") + "`" in md


def test_csv_holds_the_intervals(tmp_path):
    two_methods(tmp_path)
    cmp = build(discover([tmp_path]))
    rows = {r["label"]: r for r in csv.DictReader(io.StringIO(csv_text(cmp)))}
    iv = mean_ci(A["seeds"])
    r = rows["ijepa"]
    assert float(r["linear_mean"]) == pytest.approx(iv.mean) and int(r["linear_n"]) == 3
    assert float(r["linear_ci_low"]) == pytest.approx(iv.low) and float(r["linear_ci_high"]) == pytest.approx(iv.high)
    assert r["linear_mark"] == "best" and r["knn_mark"] == "tied" and rows["mae"]["linear_mark"] == ""
    assert r["seeds"] == "0 1 2" and r["kind"] == "method" and r["objective"] == "ijepa"
    assert float(r["images_seen"]) == 512


def test_one_seed_is_reported_without_interval_and_without_win(tmp_path):
    make_run(tmp_path, "ijepa", 0, {"linear": 0.99})
    make_run(tmp_path, "mae", 0, {"linear": 0.50}, recipe_patch={"objective": {"name": "mae"}})
    cmp = build(discover([tmp_path]))
    assert cmp.verdicts["linear"].best is None and "one seed" in cmp.verdicts["linear"].reason
    md = markdown(cmp)
    assert "99.00 (n=1)" in md and "** best" not in md and "is best" not in md


def test_groups_of_one_objective_are_named_by_what_differs(tmp_path):
    for seed in range(2):
        make_run(tmp_path, "lr1", seed, {"linear": 0.8})
        make_run(tmp_path, "lr2", seed, {"linear": 0.7}, recipe_patch={"optim": {"epochs": 2, "warmup_epochs": 1,
                                                                               "lr": 0.002}})
    labels = sorted(r.label for r in build(discover([tmp_path])).methods)
    assert labels == ["ijepa [optim.lr=0.001]", "ijepa [optim.lr=0.002]"]


def test_mixed_probe_settings_are_refused_with_the_difference_named(tmp_path):
    two_methods(tmp_path)
    make_run(tmp_path, "other", 0, {"linear": 0.6}, settings={**SETTINGS, "linear_C": [1.0]})
    with pytest.raises(CompareError) as exc:
        build(discover([tmp_path]))
    msg = exc.value.problem
    assert "settings.linear_C is [1.0] in " + str(tmp_path / "other" / "seed0") in msg
    assert "--allow-mixed" in exc.value.fix


@pytest.mark.parametrize("kwargs, path", [
    ({"data": {"name": "synthetic", "num_train": 512, "num_test": 128, "image_size": 32,
               "channels": 3}}, "data.num_train"),
    ({"splits": {"train": 256, "fit": 200, "val": 56, "test": 128}}, "splits.fit"),
    ({"settings": {**SETTINGS, "layers": "last4"}, "layers": "last4"}, "settings.layers"),
])
def test_mixed_data_and_splits_are_refused_too(tmp_path, kwargs, path):
    two_methods(tmp_path)
    make_run(tmp_path, "other", 0, {"linear": 0.6}, **kwargs)
    with pytest.raises(CompareError, match=path.replace(".", r"\.")):
        build(discover([tmp_path]))


def test_data_root_and_probe_kinds_do_not_make_a_mix(tmp_path):
    two_methods(tmp_path)
    make_run(tmp_path, "other", 0, {"linear": 0.6, "attentive": 0.7},
             data={"name": "synthetic", "root": "/elsewhere", "num_train": 256, "num_test": 128, "image_size": 32,
                   "channels": 3}, settings={**SETTINGS, "kinds": ["linear", "attentive"]})
    cmp = build(discover([tmp_path]))
    assert not cmp.mixed and cmp.probes == ["linear", "knn", "attentive"]


def test_floors_are_matched_without_layers_but_refused_on_other_data(tmp_path):
    for seed in range(2):
        make_run(tmp_path, "ijepa", seed, {"linear": 0.9}, settings={**SETTINGS, "layers": "last4"}, layers="last4")
    make_floor(tmp_path, "floors/pixels", {"linear": 0.84})  # layers last: still comparable
    cmp = build(discover([tmp_path]))
    assert not cmp.mixed and "raw pixels" in [r.label for r in cmp.floors]
    make_floor(tmp_path, "floors/pixels2", {"linear": 0.84}, settings={**SETTINGS, "knn_k": 5})
    with pytest.raises(CompareError, match="settings.knn_k"):
        build(discover([tmp_path]))


def test_allow_mixed_flags_rows_and_names_no_winner(tmp_path):
    two_methods(tmp_path)
    for seed in range(2):
        make_run(tmp_path, "ijepa_c", seed, {"linear": 0.95, "knn": 0.9}, settings={**SETTINGS, "linear_C": [1.0]})
    cmp = build(discover([tmp_path]), allow_mixed=True)
    assert cmp.mixed and any("settings.linear_C" in m for m in cmp.mixed)
    protocols = {r.label: r.protocol for r in cmp.methods}
    assert protocols == {"ijepa [P1]": "P1", "mae": "P1", "ijepa [P2]": "P2"}
    assert all(v is None for v in cmp.verdicts.values()) and not any(r.marks for r in cmp.rows)
    md = markdown(cmp)
    assert "| protocol |" in md and "not judged" in md and "## Mixed protocols (--allow-mixed)" in md
    assert "** best" not in md and "is best" not in md


def test_nothing_found_is_an_error(tmp_path):
    make_run(tmp_path, "a", 0, {"linear": 0.8}, write_probe=False)
    with pytest.raises(CompareError, match="found no finished, probed run.*no probe.json"):
        build(discover([tmp_path]))


def test_duplicate_seeds_are_flagged(tmp_path):
    make_run(tmp_path / "s1", "a", 0, {"linear": 0.8})
    make_run(tmp_path / "s2", "a", 0, {"linear": 0.8})
    row = build(discover([tmp_path])).methods[0]
    assert row.n == 2 and any("repeats, not independent seeds" in n for n in row.notes)


def test_roles_are_rows_not_a_mix(tmp_path):
    # one recipe probed in two roles (jepaflow probe RUN --encoder context): two rows, labelled by the role;
    # another method's default role beside them is no mix either
    two_methods(tmp_path)
    for seed in range(3):
        make_run(tmp_path / "ctx", "ijepa", seed, {"linear": 0.93, "knn": 0.9}, role="context",
                 settings={**SETTINGS, "encoder": "context"})
    cmp = build(discover([tmp_path]))
    assert not cmp.mixed
    roles = {r.label: r.role for r in cmp.methods}
    assert roles == {"ijepa [encoder target]": "target", "ijepa [encoder context]": "context", "mae": "context"}
    assert all(r.n == 3 for r in cmp.methods)
