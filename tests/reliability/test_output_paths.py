"""Output paths: the run folder (``--output`` / ``output_dir``) and ``jepaflow masks --output``, checked before any
data set or model is built; a full disk while a checkpoint is written; the run folder's metrics file torn by a
crash, or replaced by a folder."""

from __future__ import annotations

import errno
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from clikit import assert_one_message, assert_process_message, invoke

from jepaflow.engine.checkpoint import load_checkpoint
from jepaflow.engine.logging import read_metrics


def no_data(raw: dict) -> dict:
    """``raw`` with a data folder that does not exist: an output error reported instead proves the order of the
    checks (outputs before the data set)."""
    return {**raw, "data": {"name": "image_folder", "root": "/nonexistent/data", "image_size": 32}}


@pytest.fixture
def no_data_recipe(recipe_file):
    def write() -> Path:
        path = recipe_file()
        path.write_text(yaml.safe_dump(no_data(yaml.safe_load(path.read_text()))))
        return path
    return write


def bad_run_folders(tmp_path: Path) -> dict[str, tuple[str, str]]:
    """name -> (path, expected fragment)."""
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    return {
        "a file": (str(a_file), "is a file"),
        "under a file": (str(a_file / "run"), "goes through"),
        "under /dev/null": ("/dev/null/run", "not a folder"),
        "a long name": (str(tmp_path / ("n" * 300)), "over the file system's limit"),
        "a long path": (str(tmp_path / "/".join(["d" * 200] * 25)), "over the system's limit"),
        "a NUL byte": (str(tmp_path / "a\0b"), "NUL byte"),
        "empty": ("", "empty"),
        "blank": ("   ", "empty"),
    }


@pytest.mark.parametrize("case", list(bad_run_folders(Path("/tmp"))))
def test_bad_run_folders_are_refused_before_building_anything(no_data_recipe, tmp_path, case):
    path, fragment = bad_run_folders(tmp_path)[case]
    recipe = no_data_recipe()
    err = assert_one_message(invoke("run", recipe, "--output", path), fragment)
    assert "data folder" not in err  # the output was checked first
    if case not in ("empty", "blank"):  # the recipe field gets the same checks
        r = yaml.safe_load(recipe.read_text())
        r["output_dir"] = path
        recipe.write_text(yaml.safe_dump(r))
        err = assert_one_message(invoke("run", recipe), fragment)
        assert "data folder" not in err


def test_a_run_folder_whose_entries_have_the_wrong_kind(no_data_recipe, tmp_path):
    recipe = no_data_recipe()
    run = tmp_path / "run"
    (run / "metrics.jsonl").mkdir(parents=True)
    assert_one_message(invoke("run", recipe, "--output", run), "metrics.jsonl", "is not a file")
    shutil.rmtree(run)
    run.mkdir()
    (run / "checkpoints").write_text("x")
    assert_one_message(invoke("run", recipe, "--output", run), "checkpoints", "is not a folder")


def test_metrics_folder_on_resume(recipe_file, tmp_path):
    recipe = recipe_file({"train": {"max_steps": 2}})
    assert invoke("run", recipe).exit_code == 0
    run = tmp_path / "run"
    (run / "metrics.jsonl").unlink()
    (run / "metrics.jsonl").mkdir()
    before = (run / "checkpoints" / "last.pt").read_bytes()
    assert_one_message(invoke("run", recipe, "--resume", "--set", "train.max_steps=4"), "metrics.jsonl")
    assert (run / "checkpoints" / "last.pt").read_bytes() == before


def test_a_torn_last_metrics_line_is_dropped_on_resume(recipe_file, tmp_path):
    recipe = recipe_file({"train": {"max_steps": 3}})
    assert invoke("run", recipe).exit_code == 0
    metrics = tmp_path / "run" / "metrics.jsonl"
    with open(metrics, "a") as f:
        f.write('{"step": 4, "loss": 0.4')  # what a kill mid-write leaves
    result = invoke("run", recipe, "--resume", "--set", "train.max_steps=5")
    assert result.exit_code == 0, result.stderr
    assert "dropped 1 unreadable line" in result.stdout
    assert [r["step"] for r in read_metrics(metrics)] == [1, 2, 3, 4, 5]


# ------------------------------------------------------------------------------------------------ unwritable
def as_unprivileged(args: list[str]) -> list[str]:
    """``args`` run with the permission checks of an ordinary user: as root, through ``capsh`` without the
    capabilities that bypass file permissions (root then owns the folder, but its mode denies the write)."""
    if os.geteuid() != 0:
        return args
    if shutil.which("capsh") is None:
        pytest.skip("running as root without capsh: cannot drop the permission-bypassing capabilities")
    return ["capsh", "--drop=cap_dac_override,cap_dac_read_search,cap_fowner", "--", "-c", 'exec "$@"', "_", *args]


def test_unwritable_run_folder_and_masks_output(tiny_recipe, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({**no_data(tiny_recipe()), "output_dir": str(locked / "run")}))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "250"}
    for args, fragment in [
        (["run", str(recipe)], "permission denied"),
        (["run", str(recipe), "--output", str(locked)], "permission denied"),
        (["masks", str(recipe), "--output", str(locked / "m.png")], "permission denied"),
    ]:
        done = subprocess.run(as_unprivileged([sys.executable, "-m", "jepaflow.cli.main", *args]), cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=240)
        assert_process_message(done, fragment)
        assert "data folder" not in done.stderr
    assert list(locked.iterdir()) == []


def test_read_only_file_system_is_refused():
    # /sys is a kernel file system where nobody, root included, may create folders
    if not os.path.isdir("/sys/kernel"):
        pytest.skip("no /sys")
    from jepaflow.errors import OutputPathError
    from jepaflow.outputs import check_output_dir

    with pytest.raises(OutputPathError, match="cannot write"):
        check_output_dir("/sys/kernel/jepaflow-run")


# ------------------------------------------------------------------------------------------------ masks --output
def test_masks_output_must_be_a_writable_png(recipe_file, no_data_recipe, tmp_path):
    recipe = no_data_recipe()
    (tmp_path / "folder.png").mkdir()
    for output, fragment in [
        (tmp_path / "masks.txt", "does not end with .png"),
        (tmp_path / "masks", "does not end with .png"),
        (tmp_path / "folder.png", "is a folder"),
        ("/dev/null/m.png", "not a folder"),
        (tmp_path / ("m" * 300 + ".png"), "limit"),
        ("", "empty"),
    ]:
        err = assert_one_message(invoke("masks", recipe, "--output", output), fragment)
        assert "data folder" not in err
    done = invoke("masks", recipe_file(), "--output", tmp_path / "new" / "m.png")
    assert done.exit_code == 0 and (tmp_path / "new" / "m.png").is_file()


# ------------------------------------------------------------------------------------------------ full disk
def test_a_full_disk_while_saving_keeps_the_previous_checkpoint(tiny_recipe, monkeypatch):
    from jepaflow import checkpoints
    from jepaflow.config import load_recipe
    from jepaflow.engine.trainer import train
    from jepaflow.errors import CheckpointError

    r = tiny_recipe({"train": {"max_steps": 2}})
    train(load_recipe(r))
    last = Path(r["output_dir"]) / "checkpoints" / "last.pt"
    before = last.read_bytes()

    def full_disk(obj, f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoints.torch, "save", full_disk)
    r["train"]["max_steps"] = 4
    with pytest.raises(CheckpointError) as info:
        train(load_recipe(r), resume=True)
    assert "no space left on the device" in info.value.problem and "previous last.pt is intact" in info.value.problem
    assert "--resume" in info.value.fix
    assert last.read_bytes() == before
    assert [p.name for p in last.parent.iterdir()] == ["last.pt"]  # the partial temp file is gone


def _limit_file_size(limit: int):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_real_write_failure_through_torch_save(recipe_file, tmp_path):
    """The OS refuses the write (a file-size limit, as a full disk or quota would): torch's zip writer raises
    "[enforce fail at inline_container.cc]"; the user gets a message and the previous checkpoint."""
    recipe = recipe_file({"train": {"max_steps": 2}})
    assert invoke("run", recipe).exit_code == 0
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    before = last.read_bytes()
    done = subprocess.run(
        [sys.executable, "-m", "jepaflow.cli.main", "run", str(recipe), "--resume", "--set", "train.max_steps=4"],
        env={**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "250"}, capture_output=True, text=True,
        timeout=240, preexec_fn=_limit_file_size(len(before) // 2),
    )
    assert_process_message(done, "could not write the checkpoint", "previous last.pt is intact")
    assert last.read_bytes() == before
    assert load_checkpoint(last)["step"] == 2
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.pt"]
    assert torch.load(last, weights_only=True)["step"] == 2


def test_permission_bits_of_an_existing_metrics_file(recipe_file, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes read-only files")
    recipe = recipe_file({"train": {"max_steps": 1}})
    assert invoke("run", recipe).exit_code == 0
    metrics = tmp_path / "run" / "metrics.jsonl"
    metrics.chmod(stat.S_IRUSR)
    assert_one_message(invoke("run", recipe, "--resume"), "not writable")


def test_a_full_disk_while_writing_metrics(recipe_file, tmp_path, monkeypatch):
    from jepaflow.engine import logging as run_logging

    recipe = recipe_file({"train": {"max_steps": 2}})
    assert invoke("run", recipe).exit_code == 0
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    before = last.read_bytes()

    def full(self, record):
        raise OSError(errno.ENOSPC, "No space left on device", str(self.path))

    monkeypatch.setattr(run_logging.MetricsWriter, "write", full)
    err = assert_one_message(invoke("run", recipe, "--resume", "--set", "train.max_steps=4"),
                             "No space left on device", "metrics.jsonl")
    assert "--resume" in err and last.read_bytes() == before
