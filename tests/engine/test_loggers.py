"""train.loggers: TensorBoard events readable by TensorBoard's own reader, an offline W&B run (a stand-in module:
wandb is not a test dependency), and recipe errors for loggers that cannot run."""

from __future__ import annotations

import importlib.util
import json
import sys
import types

import pytest

from jepaflow.config import load_recipe
from jepaflow.engine.loggers import open_loggers
from jepaflow.engine.logging import read_metrics
from jepaflow.errors import RecipeError

event_accumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator", reason="tensorboard is in the test extra"
)


def tb_scalars(log_dir, tag: str) -> list[tuple[int, float]]:
    acc = event_accumulator.EventAccumulator(str(log_dir))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def assert_series(got: list[tuple[int, float]], want: list[tuple[int, float]]) -> None:
    """Same steps; same values to float32 precision (TensorBoard stores scalars as float32)."""
    assert [s for s, _ in got] == [s for s, _ in want]
    assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6)


def records(steps, scale: float = 1.0) -> list[dict]:
    return [{"step": s, "epoch": s / 4, "loss": scale / s, "lr": 1e-3 * s, "note": "text", "finished": False}
            for s in steps]


def test_tensorboard_scalars_are_read_back_by_tensorboard(tmp_path):
    sinks = open_loggers(["jsonl", "tensorboard"], tmp_path, resume_step=None)
    for r in records([1, 2, 3, 4]):
        sinks.write(r)
    sinks.close()
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4]
    assert_series(tb_scalars(tmp_path / "tensorboard", "train/loss"), [(1, 1.0), (2, 0.5), (3, 1 / 3), (4, 0.25)])
    acc = event_accumulator.EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    # numbers only: strings and booleans are not scalars; the step is the x axis, not a series
    assert sorted(acc.Tags()["scalars"]) == ["train/epoch", "train/loss", "train/lr"]


def test_resume_purges_the_redone_steps_like_metrics_jsonl(tmp_path):
    first = open_loggers(["jsonl", "tensorboard"], tmp_path, resume_step=None)
    for r in records([1, 2, 3, 4]):
        first.write(r)
    first.close()
    resumed = open_loggers(["jsonl", "tensorboard"], tmp_path, resume_step=2)  # the checkpoint was at step 2
    for r in records([3, 4, 5], scale=10.0):
        resumed.write(r)
    resumed.close()
    want = [(1, 1.0), (2, 0.5), (3, 10 / 3), (4, 2.5), (5, 2.0)]
    assert_series([(r["step"], r["loss"]) for r in read_metrics(tmp_path / "metrics.jsonl")], want)
    assert_series(tb_scalars(tmp_path / "tensorboard", "train/loss"), want)


class FakeWandb(types.ModuleType):
    """Records what jepaflow asks of ``wandb``."""

    def __init__(self):
        super().__init__("wandb")
        self.inits, self.logged, self.finished = [], [], 0

    def init(self, **kwargs):
        self.inits.append(kwargs)
        fake = self

        class Run:
            def log(self, data, step):
                fake.logged.append((step, data))

            def finish(self):
                fake.finished += 1

        return Run()


def test_wandb_is_offline_unless_the_user_says_and_resume_continues_the_run(tmp_path, monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    sinks = open_loggers(["jsonl", "wandb"], tmp_path, resume_step=None, config={"seed": 3})
    sinks.write(records([1])[0])
    sinks.close()
    init = fake.inits[0]
    assert init["mode"] == "offline" and init["config"] == {"seed": 3} and init["dir"] == str(tmp_path)
    assert fake.logged == [(1, {"epoch": 0.25, "loss": 1.0, "lr": 1e-3})] and fake.finished == 1
    monkeypatch.setenv("WANDB_MODE", "online")
    open_loggers(["jsonl", "wandb"], tmp_path, resume_step=1).close()
    assert fake.inits[1]["mode"] == "online" and fake.inits[1]["id"] == init["id"]  # the same W&B run
    assert fake.inits[1]["resume"] == "allow"


def test_loggers_field_errors_name_the_path(tiny_recipe, monkeypatch):
    assert load_recipe(tiny_recipe()).train.loggers == ["jsonl"]
    with pytest.raises(RecipeError) as err:
        load_recipe(tiny_recipe({"train": {"loggers": ["tensorboard"]}}))
    assert "train.loggers: must include jsonl" in str(err.value)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real_find_spec(name, *a))
    with pytest.raises(RecipeError) as err:
        load_recipe(tiny_recipe({"train": {"loggers": ["jsonl", "wandb", "nope"]}}))
    assert "train.loggers" in str(err.value) and "nope" in str(err.value)
    with pytest.raises(RecipeError) as err:
        load_recipe(tiny_recipe({"train": {"loggers": ["jsonl", "wandb"]}}))
    assert "train.loggers: wandb is not installed: pip install wandb" in str(err.value)


def test_a_training_run_logs_the_same_values_to_tensorboard(tiny_recipe, tmp_path):
    from jepaflow.engine.trainer import train

    recipe = load_recipe(tiny_recipe({"train": {"loggers": ["jsonl", "tensorboard"], "max_steps": 4,
                                                 "monitor_every": None}}))
    summary = train(recipe)
    run = tmp_path / "run"
    lines = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert summary["step"] == 4 and [r["step"] for r in lines] == [1, 2, 3, 4]
    assert_series(tb_scalars(run / "tensorboard", "train/loss"), [(r["step"], r["loss"]) for r in lines])
