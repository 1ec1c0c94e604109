"""The sweep's bookkeeping without training: the matrix and its folders, what a run folder's files say about it
(done / resume / new), folders holding other recipes' runs, the child's command line and the manifest."""

from __future__ import annotations

import json

import pytest
import yaml

from jepaflow.sweep import MANIFEST, SweepError, error_message, manifest, plan, recipe_differences, run_state


def finished(run_dir, step=4, total=4, probe=True, exit_code=None):
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    (run_dir / "checkpoints" / "last.pt").write_bytes(b"")
    summary = {"step": step, "total_steps": total}
    if exit_code:
        summary["exit_code"] = exit_code
    (run_dir / "summary.json").write_text(json.dumps(summary))
    if probe:
        (run_dir / "probe.json").write_text("{}")


def test_run_state_from_the_folder(tmp_path):
    probed = {"probe": {"enabled": True}, "train": {"max_steps": None}}
    run = tmp_path / "r"
    assert run_state(run, probed) == "new"
    finished(run)
    assert run_state(run, probed) == "done"
    (run / "probe.json").unlink()  # the probe was cut short: resume redoes it
    assert run_state(run, probed) == "resume"
    assert run_state(run, {"probe": {"enabled": False}, "train": {}}) == "done"
    finished(run, step=2)  # stopped half way
    assert run_state(run, probed) == "resume"
    assert run_state(run, {**probed, "train": {"max_steps": 2}}) == "done"  # ... unless max_steps said 2
    (run / "summary.json").write_text(json.dumps({"step": 4, "total_steps": 4,
                                                  "probe": {"skipped": "the data set has no labels"}}))
    (run / "probe.json").unlink(missing_ok=True)
    assert run_state(run, probed) == "done"  # nothing to probe: resuming would not change that
    finished(run, exit_code=143)  # complete, but the probe was stopped by a signal
    assert run_state(run, probed) == "resume"
    (run / "summary.json").unlink()
    assert run_state(run, probed) == "resume"  # a checkpoint and nothing else


def test_recipe_differences_allow_what_resume_allows():
    a = {"seed": 0, "optim": {"lr": 1}, "train": {"batch_size": 8, "log_every": 1}, "probe": {"kinds": ["knn"]},
         "output_dir": "x"}
    b = {**a, "train": {"batch_size": 8, "log_every": 5}, "probe": {"kinds": ["linear"]}, "output_dir": "y"}
    assert recipe_differences(a, b) == []
    assert recipe_differences(a, {**b, "optim": {"lr": 2}}) == ["optim"]
    assert recipe_differences(a, {**b, "seed": 1}) == ["seed"]
    assert recipe_differences(a, {**b, "train": {"batch_size": 16}}) == ["train.batch_size"]


def test_plan_lays_out_the_matrix(recipe_file, tmp_path):
    a = recipe_file(name="a.yaml")
    b = recipe_file({"optim": {"lr": 0.002}}, name="b.yaml")
    runs = plan([a, b], [0, 1, 2], ["optim.epochs=1"], tmp_path / "sw")
    assert [(r.index, r.name) for r in runs] == [(0, "a/seed0"), (1, "a/seed1"), (2, "a/seed2"), (3, "b/seed0"),
                                                 (4, "b/seed1"), (5, "b/seed2")]
    assert runs[4].run_dir == tmp_path / "sw" / "b" / "seed1"
    assert runs[4].recipe["seed"] == 1 and runs[4].recipe["optim"]["epochs"] == 1
    assert runs[4].recipe["optim"]["lr"] == 0.002 and all(r.state == "new" for r in runs)
    cmd = runs[4].command("python")
    assert cmd[:4] == ["python", "-m", "jepaflow.cli.main", "run"]
    assert cmd[cmd.index("--output") + 1] == str(runs[4].run_dir)
    sets = [cmd[i + 1] for i, c in enumerate(cmd) if c == "--set"]
    assert sets == ["seed=1", "optim.epochs=1", "train.progress=false"] and "--resume" not in cmd
    runs[4].state = "resume"
    assert runs[4].command("python")[-1] == "--resume"


def test_plan_reports_every_problem_before_anything_runs(recipe_file, tmp_path):
    good = recipe_file(name="a.yaml")
    bad = recipe_file({"optim": {"lr": -1.0}}, name="bad.yaml")
    other = tmp_path / "other"
    other.mkdir()
    twin = other / "a.yaml"
    twin.write_text(good.read_text())
    with pytest.raises(SweepError) as exc:
        plan([good, bad, twin], [0], [], tmp_path / "sw")
    msg = exc.value.problem
    assert "optim.lr" in msg and "would share the run folders" in msg and str(twin) in msg
    assert not (tmp_path / "sw").exists()
    with pytest.raises(SweepError, match="conflicts with the sweep's seeds"):
        plan([good], [0], ["seed=3"], tmp_path / "sw")
    with pytest.raises(SweepError, match="conflicts with the sweep's run folders"):
        plan([good], [0], ["output_dir=x"], tmp_path / "sw")


def test_a_folder_holding_another_recipes_run_is_refused(recipe_file, tmp_path):
    a = recipe_file(name="a.yaml")
    runs = plan([a], [0], [], tmp_path / "sw")
    run_dir = runs[0].run_dir
    stored = {**runs[0].recipe, "optim": {**runs[0].recipe["optim"], "lr": 0.5}}
    run_dir.mkdir(parents=True)
    (run_dir / "recipe.yaml").write_text(yaml.safe_dump(stored))
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "last.pt").write_bytes(b"")
    with pytest.raises(SweepError, match=r"holds a run of another recipe \(differs in optim\)"):
        plan([a], [0], [], tmp_path / "sw")
    # train and probe may differ, as on --resume: no clash, and the run is resumed
    (run_dir / "recipe.yaml").write_text(yaml.safe_dump({**runs[0].recipe, "train": {
        **runs[0].recipe["train"], "log_every": 99}}))
    assert plan([a], [0], [], tmp_path / "sw")[0].state == "resume"


def test_manifest_is_rebuilt_from_the_folders_and_keeps_earlier_failures(recipe_file, tmp_path):
    out = tmp_path / "sw"
    runs = plan([recipe_file(name="a.yaml")], [0, 1], [], out)
    runs[0].outcome, runs[0].exit_code, runs[0].error = "failed", 1, "error: boom"
    doc = manifest(runs, out, [0, 1], [], ["jepaflow", "sweep"])
    out.mkdir()
    (out / MANIFEST).write_text(json.dumps(doc))
    assert doc["schema"] == "jepaflow-sweep" and doc["counts"] == {"new": 2}
    assert doc["runs"][0]["outcome"] == "failed" and doc["runs"][0]["run_dir"] == "a/seed0"
    # another process (another array task) rebuilds it: the failure it did not see is kept ...
    again = plan([recipe_file(name="a.yaml")], [0, 1], [], out)
    doc2 = manifest(again, out, [0, 1], [], None)
    assert doc2["runs"][0]["outcome"] == "failed" and doc2["runs"][0]["error"] == "error: boom"
    # ... until the folder holds a finished run
    finished(runs[0].run_dir)
    doc3 = manifest(again, out, [0, 1], [], None)
    assert doc3["runs"][0]["state"] == "done" and "outcome" not in doc3["runs"][0]


def test_error_message_reads_the_childs_error_lines(tmp_path):
    log = tmp_path / "sweep.log"
    log.write_text("step 1\nerror: data folder '/x' does not exist\n  fix: set data.root\n")
    assert error_message(log) == "error: data folder '/x' does not exist fix: set data.root"
    log.write_text("Traceback (most recent call last):\n  ...\nRuntimeError: boom\n")
    assert error_message(log) == "RuntimeError: boom"
