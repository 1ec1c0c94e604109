"""``jepaflow sweep`` for real: a run stopped by SIGTERM is checkpointed and the same command resumes it exactly
where it stopped, a finished run is skipped, a failing recipe is reported while the others go on, and bad input
is refused before anything runs. (The sweep behind ``jepaflow compare``'s tests is in test_cli_compare.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from conftest import TINY_RECIPE, merge
from typer.testing import CliRunner

from jepaflow.cli.main import app

runner = CliRunner()


def child_env(tmp_path: Path) -> dict[str, str]:
    # one thread per process (two cores on CI), and a feature cache of the test's own
    return {**os.environ, "OMP_NUM_THREADS": "1", "JEPAFLOW_CACHE": str(tmp_path / "cache"), "COLUMNS": "200"}


def write(tmp_path: Path, name: str, patch: dict) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(merge(TINY_RECIPE, patch), sort_keys=False))
    return path


def sweep_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "jepaflow.cli.main", "sweep", *args]


def test_sigterm_stops_the_sweep_and_the_same_command_resumes_then_skips(tmp_path):
    # 32 images, batch 8: 4 steps per epoch, 50 epochs; the signal comes after the first metrics line
    recipe = write(tmp_path, "long.yaml", {"data": {"num_train": 32, "num_test": 16},
                                           "optim": {"epochs": 50, "warmup_epochs": 1},
                                           "train": {"batch_size": 8, "log_every": 2, "monitor_every": None}})
    out = tmp_path / "sw"
    cmd = sweep_cmd(str(recipe), "--seeds", "1", "--output", str(out))
    env = child_env(tmp_path)
    run_dir = out / "long" / "seed0"
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (run_dir / "metrics.jsonl").is_file():
            time.sleep(0.05)
        assert (run_dir / "metrics.jsonl").is_file(), "the run never started"
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, output
    assert "stopped long/seed0" in output and "run the same command again" in output
    summary = json.loads((run_dir / "summary.json").read_text())
    stopped_at = summary["step"]
    assert summary["stopped_by"] == "SIGTERM" and 0 < stopped_at < 200
    assert (run_dir / "checkpoints" / "last.pt").is_file()
    entry = json.loads((out / "sweep.json").read_text())["runs"][0]
    assert entry["state"] == "resume" and entry["outcome"] == "stopped" and entry["exit_code"] == 143

    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "resume long/seed0" in res.stdout
    log = (run_dir / "sweep.log").read_text()
    assert log.count("=== jepaflow sweep") == 2 and "--resume" in log.split("=== jepaflow sweep")[2]
    assert f"(from step {stopped_at})" in log
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 200  # one continuous record, no step twice
    assert json.loads((run_dir / "summary.json").read_text())["finished"] is True

    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "skip long/seed0: finished" in res.stdout
    assert (run_dir / "sweep.log").read_text().count("=== jepaflow sweep") == 2  # no child started
    assert json.loads((out / "sweep.json").read_text())["counts"] == {"done": 1}


def test_bad_input_is_refused_before_anything_runs(tmp_path):
    good = write(tmp_path, "a.yaml", {})
    bad = write(tmp_path, "b.yaml", {"optim": {"warmup_epochs": -1}})
    res = runner.invoke(app, ["sweep", str(good), str(bad), "--output", str(tmp_path / "sw")])
    assert res.exit_code == 2
    assert "optim.warmup_epochs" in res.output and "nothing has run" in res.output
    assert not (tmp_path / "sw").exists()
    res = runner.invoke(app, ["sweep", str(good), "--output", str(tmp_path / "sw"), "--set", "seed=4"])
    assert res.exit_code == 2 and "--seeds" in res.output
    res = runner.invoke(app, ["sweep", str(good), "--seeds", "2", "--output", str(tmp_path / "sw"), "--index", "2"])
    assert res.exit_code == 2 and "the matrix has 2 runs" in res.output
    blocker = tmp_path / "file"
    blocker.write_text("")
    res = runner.invoke(app, ["sweep", str(good), "--output", str(blocker / "sw")])
    assert res.exit_code == 2 and "goes through " + str(blocker) in " ".join(res.output.split())


def test_dry_run_numbers_the_matrix(tmp_path):
    a, b = write(tmp_path, "a.yaml", {}), write(tmp_path, "b.yaml", {})
    res = runner.invoke(app, ["sweep", str(a), str(b), "--seeds", "2", "--first-seed", "5", "--output",
                              str(tmp_path / "sw"), "--dry-run"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    for i, name in enumerate(["a/seed5", "a/seed6", "b/seed5", "b/seed6"]):
        assert f"│ {i}     │ {name} │ new" in res.output
    assert not (tmp_path / "sw").exists()
