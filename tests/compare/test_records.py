"""Finding and reading runs for ``jepaflow compare``: grouping over seeds, the probe.json reader, what is left
out and why, and the training time read from metrics.jsonl."""

from __future__ import annotations

import copy
import json

import pytest
from fake_runs import RECIPE, make_floor, make_run, probe_doc

from jepaflow.compare.records import (
    CompareError,
    canonical,
    differences,
    discover,
    group_key,
    read_probe_json,
    training_seconds,
)


def test_group_key_ignores_seed_output_probe_root_and_run_mechanics():
    a = copy.deepcopy(RECIPE)
    b = copy.deepcopy(RECIPE)
    b.update(seed=7, output_dir="elsewhere", probe={"enabled": False})
    b["data"] = {**b["data"], "root": "/mnt/other"}
    b["train"] = {**b["train"], "num_workers": 8, "log_every": 50, "progress": True, "monitor_every": 5,
                  "checkpoint_every_epochs": 3, "loggers": ["jsonl", "tensorboard"]}
    assert canonical(group_key(a)) == canonical(group_key(b))


@pytest.mark.parametrize("path, value", [
    ("optim.lr", 0.002), ("objective.name", "mae"), ("encoder.depth", 4), ("train.batch_size", 64),
    ("train.max_steps", 8), ("train.precision", "bf16"), ("data.image_size", 28),
])
def test_what_changes_the_weights_separates_groups(path, value):
    b = copy.deepcopy(RECIPE)
    section, key = path.split(".")
    b[section] = {**b[section], key: value}
    assert canonical(group_key(RECIPE)) != canonical(group_key(b))
    assert differences(group_key(RECIPE), group_key(b)) == [path]


def test_read_probe_json_v1(tmp_path):
    doc = probe_doc({"linear": 0.8, "knn": 0.7, "lowshot:10%": 0.5, "lowshot:1_per_class": 0.3},
                    baseline={"linear": 0.4, "knn": 0.3}, baseline_hash="sha256:abc")
    (tmp_path / "probe.json").write_text(json.dumps(doc))
    p = read_probe_json(tmp_path / "probe.json")
    assert p.accuracies == {"linear": 0.8, "knn": 0.7, "lowshot:10%": 0.5, "lowshot:1_per_class": 0.3}
    assert p.baseline == {"linear": 0.4, "knn": 0.3} and p.baseline_hash == "sha256:abc"
    assert p.role == "target" and p.layers == "last" and p.source_kind == "run"
    assert p.settings["linear_C"] == [0.001, 0.01, 0.1, 1.0, 10.0] and p.splits["test"] == 128


def test_read_probe_json_refuses_earlier_and_unknown_files(tmp_path):
    path = tmp_path / "probe.json"
    path.write_text(json.dumps({"knn": 0.7, "linear": 0.6, "seconds": 3.0}))  # jepaflow's first probe.json
    with pytest.raises(CompareError) as exc:
        read_probe_json(path)
    assert "earlier jepaflow" in exc.value.problem and "jepaflow probe" in exc.value.fix
    path.write_text(json.dumps({"skipped": "stopped by SIGTERM during the probe"}))  # the engine's record
    with pytest.raises(CompareError, match="the probe did not run .stopped by SIGTERM") as exc:
        read_probe_json(path)
    assert "jepaflow probe" in exc.value.fix
    path.write_text(json.dumps({**probe_doc({"linear": 0.5}), "version": 99}))
    with pytest.raises(CompareError, match="version 99"):
        read_probe_json(path)
    path.write_text("{not json")
    with pytest.raises(CompareError, match="cannot be read"):
        read_probe_json(path)
    doc = probe_doc({"linear": 0.5})
    del doc["settings"]
    path.write_text(json.dumps(doc))
    with pytest.raises(CompareError, match="lacks a field"):
        read_probe_json(path)


def test_discover_finds_runs_and_floors_and_says_why_others_are_left_out(tmp_path):
    make_run(tmp_path, "a", 0, {"linear": 0.8})
    make_run(tmp_path, "a", 1, {"linear": 0.81})
    make_run(tmp_path, "b", 0, {"linear": 0.7}, steps=8, total_steps=16)  # stopped half way
    make_run(tmp_path, "c", 0, {"linear": 0.7}, write_probe=False)  # not probed
    make_run(tmp_path, "d", 0, {"linear": 0.7}, steps=8, total_steps=16, recipe_patch={"train": {"max_steps": 8}})
    legacy = make_run(tmp_path, "e", 0, {"linear": 0.7})
    (legacy / "probe.json").write_text(json.dumps({"linear": 0.7, "knn": 0.6}))
    unfinished = make_run(tmp_path, "f", 0, {"linear": 0.7})
    (unfinished / "summary.json").unlink()
    make_floor(tmp_path, "floors/pixels", {"linear": 0.84, "knn": 0.85})
    found = discover([tmp_path])
    assert sorted(str(r.run_dir.relative_to(tmp_path)) for r in found.runs) == ["a/seed0", "a/seed1", "d/seed0"]
    assert [p.source_kind for p in found.probes] == ["pixels"]
    why = {str(p.relative_to(tmp_path)): reason for p, reason in found.excluded}
    assert set(why) == {"b/seed0", "c/seed0", "e/seed0", "f/seed0"}
    assert "stopped at step 8 of 16" in why["b/seed0"] and "--resume" in why["b/seed0"]
    assert "no probe.json" in why["c/seed0"] and "jepaflow probe" in why["c/seed0"]
    assert "earlier jepaflow" in why["e/seed0"]
    assert "no summary.json" in why["f/seed0"]
    # the same folder given twice (directly and through its parent) is read once
    assert len(discover([tmp_path / "a", tmp_path]).runs) == 3
    with pytest.raises(CompareError, match="does not exist"):
        discover([tmp_path / "nope"])


def test_training_seconds_sums_the_logged_windows():
    # windows of 2, 2 and 4 steps at batch 32: 64/64 + 64/32 + 128/128 = 1 + 2 + 1 seconds
    metrics = [{"step": 2, "img_per_s": 64.0}, {"step": 4, "img_per_s": 32.0}, {"step": 8, "img_per_s": 128.0},
               {"note": "no step"}, {"step": 8, "img_per_s": 1e9}]  # a repeated step adds nothing
    assert training_seconds(metrics, 32) == pytest.approx(4.0)
    assert training_seconds([{"step": 3}], 32) is None


def test_run_record_epochs_images_and_time(tmp_path):
    make_run(tmp_path, "a", 0, {"linear": 0.8}, steps=16)
    run = discover([tmp_path]).runs[0]
    assert run.epochs == 2.0 and run.images_seen == 16 * 32 and run.seed == 0 and run.objective == "ijepa"
    assert run.train_seconds == pytest.approx(8 * 64 / 64.0)  # 8 windows of 2 steps x 32 images at 64 img/s
