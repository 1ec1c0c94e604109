"""Processes that die or stop: a rank of a 2-process CPU run killed (SIGKILL) or frozen (SIGSTOP), under a plain
launcher (one process per rank, as ``srun`` starts them) and under ``torchrun``; SIGTERM during the end-of-run
probe. The survivors stop within a bounded time with a message; nothing hangs; no checkpoint is lost."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from jepaflow.engine.checkpoint import load_checkpoint

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def long_recipe(tiny_recipe, tmp_path: Path, **train) -> Path:
    raw = tiny_recipe({"optim": {"epochs": 400}, "train": {"log_every": 1, **train}})
    path = tmp_path / "long.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def wait_for_steps(metrics: Path, n: int, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= n:
            return
        time.sleep(0.1)
    raise AssertionError(f"{metrics} did not reach {n} lines in {timeout} s")


def launch_ranks(recipe: Path, tmp_path: Path, *extra: str) -> list[subprocess.Popen]:
    """Two ranks started independently (no torchrun agent watching them)."""
    port = str(free_port())
    procs = []
    for rank in (0, 1):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "250", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": port, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2"}
        procs.append(subprocess.Popen([sys.executable, "-m", "jepaflow.cli.main", "run", str(recipe), *extra],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                      cwd=tmp_path))
    return procs


def finish(proc: subprocess.Popen, timeout: float) -> tuple[int, str, str, float]:
    t0 = time.time()
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err, time.time() - t0


@pytest.mark.slow
def test_a_killed_rank_stops_the_other_with_a_message(tiny_recipe, tmp_path):
    recipe = long_recipe(tiny_recipe, tmp_path, checkpoint_every_steps=2)
    procs = launch_ranks(recipe, tmp_path)
    try:
        wait_for_steps(tmp_path / "run" / "metrics.jsonl", 4)
        procs[1].kill()
        code, out, err, waited = finish(procs[0], timeout=120)
    finally:
        for p in procs:
            p.kill()
    print(f"\nkilled rank: the survivor stopped {waited:.1f} s after the kill")
    assert code == 2, err[-3000:]
    assert "error: process 0 of 2: a collective operation failed" in err
    assert "died or lost its connection" in err and "--resume" in err
    assert "Traceback" not in err
    assert waited < 60
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["step"] >= 2


@pytest.mark.slow
def test_a_frozen_rank_stops_the_other_after_the_timeout(tiny_recipe, tmp_path):
    recipe = long_recipe(tiny_recipe, tmp_path)
    procs = launch_ranks(recipe, tmp_path, "--set", "train.dist_timeout_s=10")
    try:
        wait_for_steps(tmp_path / "run" / "metrics.jsonl", 3)
        procs[1].send_signal(signal.SIGSTOP)  # alive, connections open, never answering: a hang without timeout
        code, out, err, waited = finish(procs[0], timeout=180)
    finally:
        for p in procs:
            p.kill()
    print(f"\nfrozen rank: the survivor stopped {waited:.1f} s after the freeze (timeout 10 s)")
    assert code == 2, err[-3000:]
    assert "stopped answering within train.dist_timeout_s" in err and "Traceback" not in err
    assert 5 < waited < 120


@pytest.mark.slow
def test_torchrun_tears_down_when_a_rank_dies(tiny_recipe, tmp_path):
    recipe = long_recipe(tiny_recipe, tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
         "jepaflow.cli.main", "run", str(recipe)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True,
    )
    try:
        wait_for_steps(tmp_path / "run" / "metrics.jsonl", 3)
        workers = [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
        assert len(workers) == 2
        os.kill(max(workers), signal.SIGKILL)
        code, out, _, waited = finish(proc, timeout=180)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    print(f"\ntorchrun: exited {waited:.1f} s after a rank was killed (code {code})")
    assert code != 0 and waited < 90
    assert "SIGKILL" in out  # torchrun names the rank that died as the root cause


@pytest.mark.slow
def test_sigterm_during_the_end_of_run_probe(tiny_recipe, tmp_path):
    # an attentive head trained for 100,000 epochs: a probe that is surely still running when the signal comes
    raw = tiny_recipe({"optim": {"epochs": 1}, "probe": {"enabled": True, "kinds": ["knn", "attentive"],
                                                        "attentive_epochs": 100_000}})
    path = tmp_path / "probe.yaml"
    path.write_text(yaml.safe_dump(raw))
    proc = subprocess.Popen([sys.executable, "-m", "jepaflow.cli.main", "run", str(path)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "250"})
    run = tmp_path / "run"
    try:
        deadline = time.time() + 180
        while not (run / "curves.png").exists():  # written when training ends, just before the probe
            assert time.time() < deadline and proc.poll() is None, "the run ended before its probe"
            time.sleep(0.05)
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        code, out, err, _ = finish(proc, timeout=120)
    finally:
        proc.kill()
    assert code == 143, out[-2000:] + err[-2000:]
    assert "stopped by SIGTERM during the end-of-run probe" in out and "Traceback" not in out + err
    assert "run summary" in out  # the summary is still printed ...
    summary = yaml.safe_load((run / "summary.json").read_text())  # ... and written
    assert summary["finished"] and "SIGTERM" in summary["probe"]["skipped"]
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == summary["step"]
