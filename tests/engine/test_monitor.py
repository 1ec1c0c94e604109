"""The engine's label-free monitors: written at the right steps only, on the representation encoder's pooled
features of the fixed batch in eval mode, without changing the training trajectory."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from jepaflow.config import load_recipe
from jepaflow.engine import monitor as monitor_mod
from jepaflow.engine.build import build_dataset, build_objective
from jepaflow.engine.checkpoint import load_checkpoint
from jepaflow.engine.logging import read_metrics
from jepaflow.engine.monitor import evenly_spaced, knn_due, monitor_due
from jepaflow.engine.trainer import train
from jepaflow.layers.monitors import feature_std, rankme

MONITOR_KEYS = {"rankme", "repr_std", "repr_std_norm"}


def test_due_steps(tiny_recipe):
    r = load_recipe(tiny_recipe({"train": {"monitor_every": 4, "monitor_knn_every_epochs": 2}}))
    assert [s for s in range(1, 31) if monitor_due(s, r, run_steps=30)] == [4, 8, 12, 16, 20, 24, 28, 30]
    assert [s for s in range(1, 31) if knn_due(s, r, steps_per_epoch=5)] == [10, 20, 30]
    off = load_recipe(tiny_recipe({"train": {"monitor_every": None}}))
    assert not any(monitor_due(s, off, 30) or knn_due(s, off, 5) for s in range(1, 31))
    assert evenly_spaced(10, 4) == [0, 2, 5, 7] and evenly_spaced(3, 8) == [0, 1, 2]


def test_trainer_writes_monitors_at_monitor_steps_only(tiny_recipe, monkeypatch):
    calls: list[bool] = []
    real_call = monitor_mod.TrainingMonitor.__call__

    def spy(self, knn=False):
        calls.append(knn)
        return real_call(self, knn=knn)

    monkeypatch.setattr(monitor_mod.TrainingMonitor, "__call__", spy)
    # 2 epochs x 8 steps; metric lines every 5 steps, monitors every 3, kNN at every epoch end
    r = tiny_recipe({"train": {"log_every": 5, "monitor_every": 3, "monitor_samples": 64,
                               "monitor_knn_every_epochs": 1, "monitor_knn_samples": 64}})
    recipe = load_recipe(r)
    train(recipe)
    rows = read_metrics(Path(r["output_dir"]) / "metrics.jsonl")
    by_step = {row["step"]: row for row in rows}
    monitored = sorted(s for s, row in by_step.items() if MONITOR_KEYS <= set(row))
    assert monitored == [3, 6, 8, 9, 12, 15, 16]  # multiples of 3, the kNN epoch ends 8 and 16 (the last step)
    assert sorted(s for s, row in by_step.items() if "knn_acc" in row) == [8, 16]
    assert sorted(by_step) == [3, 5, 6, 8, 9, 10, 12, 15, 16]  # monitor steps are log steps too, nothing else
    assert len(calls) == len(monitored) and calls.count(True) == 2  # the monitor ran on those steps only
    assert all("loss" in row for row in rows)
    last = by_step[16]
    assert 1.0 <= last["rankme"] <= 48 and last["repr_std"] > 0 and last["repr_std_norm"] > 0
    assert 0.0 <= last["knn_acc"] <= 1.0

    # The values are those of the representation encoder (I-JEPA: the target encoder), eval mode, pooled with
    # its own pool, on the evenly spaced train images with the deterministic transform.
    objective = build_objective(recipe)
    objective.load_state_dict(load_checkpoint(Path(r["output_dir"]) / "checkpoints" / "last.pt")["objective"])
    encoder = objective.representation_encoder().eval()
    ds = build_dataset(recipe, "train", augment=False)
    images = torch.stack([ds[i][0] for i in evenly_spaced(len(ds), 64)])
    with torch.no_grad():
        feats = encoder.pool(encoder(images))
    assert last["rankme"] == pytest.approx(rankme(feats).item(), rel=1e-4)
    assert last["repr_std"] == pytest.approx(feature_std(feats).item(), rel=1e-4)
    assert last["repr_std_norm"] == pytest.approx(feature_std(feats, normalize=True).item(), rel=1e-4)


def test_monitoring_does_not_change_the_trajectory(tiny_recipe, tmp_path):
    # drop path draws from the global RNG and the monitor switches the encoder to eval mode and back: neither
    # may shift a single loss
    base = {"encoder": {"drop_path_rate": 0.2}, "train": {"max_steps": 6, "log_every": 1}}
    off = tiny_recipe({**base, "output_dir": str(tmp_path / "off"), "train": {**base["train"], "monitor_every": None}})
    on = tiny_recipe({**base, "output_dir": str(tmp_path / "on"), "train": {**base["train"], "monitor_every": 2,
                                                                         "monitor_samples": 32}})
    train(load_recipe(off))
    train(load_recipe(on))
    rows_off = read_metrics(tmp_path / "off" / "metrics.jsonl")
    rows_on = read_metrics(tmp_path / "on" / "metrics.jsonl")
    assert [r["loss"] for r in rows_off] == [r["loss"] for r in rows_on]
    assert not any("rankme" in r for r in rows_off) and [r["step"] for r in rows_on if "rankme" in r] == [2, 4, 6]
