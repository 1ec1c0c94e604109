"""``jepaflow probe``: a run's end-of-run probe and a later ``jepaflow probe RUN`` give the same numbers without
running the encoder again; roles, layers, floors (pixels, timm:NAME); user errors (exit 2, one message); and the
raw-pixel floor on Fashion-MNIST (a subset, against scikit-learn)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_RECIPE, merge
from typer.testing import CliRunner

from jepaflow.cli.main import app
from jepaflow.config import load_recipe
from jepaflow.engine.trainer import train

runner = CliRunner()
FMNIST = Path("/usr/share/datasets/fashion-mnist")
FAST = ["--set", "probe.linear_C=[0.1, 1.0]"]


def invoke(*args: str):
    return runner.invoke(app, list(args), env={"COLUMNS": "250"})


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """An 8-step tiny I-JEPA run (4 blocks) that ended with its own kNN and linear probes, shared by this module's
    tests (none of them changes the run; each writes its own probe.json): ``(run folder, summary, the end-of-run
    probe.json, the feature cache folder the end-of-run probe filled)``."""
    root = tmp_path_factory.mktemp("probe-run")
    r = merge(TINY_RECIPE, {"output_dir": str(root / "run"), "encoder": {"depth": 4},
                            "optim": {"epochs": 1, "warmup_epochs": 0},
                            "probe": {"enabled": True, "kinds": ["knn", "linear"], "linear_C": [0.1, 1.0]}})
    with pytest.MonkeyPatch.context() as mp:  # module scope: the per-test cache fixture does not apply yet
        mp.setenv("JEPAFLOW_CACHE", str(root / "cache"))
        summary = train(load_recipe(r))
    run_dir = Path(r["output_dir"])
    return run_dir, summary, json.loads((run_dir / "probe.json").read_text()), root / "cache"


def test_probe_of_a_run_equals_its_end_of_run_probe_and_reads_the_cache(trained_run, monkeypatch):
    run_dir, summary, end_of_run, cache = trained_run
    monkeypatch.setenv("JEPAFLOW_CACHE", str(cache))

    def no_encoder(*args, **kwargs):
        raise AssertionError("the encoder ran although its features are cached")

    monkeypatch.setattr("jepaflow.probes.evaluate.extract_features", no_encoder)
    res = invoke("probe", str(run_dir))  # default output: the run folder's probe.json, rewritten
    out = run_dir / "probe.json"
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    assert doc["cache"] == {"train": "hit", "test": "hit"}
    assert doc["source"]["content_hash"] == end_of_run["source"]["content_hash"]
    assert doc["source"]["role"] == end_of_run["source"]["role"] == "target"  # I-JEPA's representation encoder
    assert doc["settings"] == end_of_run["settings"]
    for kind in ("knn", "linear"):
        assert doc["probes"][kind]["accuracy"] == end_of_run["probes"][kind]["accuracy"] == summary["probe"][kind]
    assert "linear" in res.output and "wrote" in res.output


def test_probe_roles_layers_and_kinds(trained_run, tmp_path):
    run_dir, *_ = trained_run
    res = invoke("probe", str(run_dir), "--encoder", "context", "--layers", "last4", "--probe", "knn,lowshot",
                 *FAST, "--set", "probe.lowshot_per_class=[1]", "--set", "probe.lowshot_fractions=[]",
                 "--output", str(tmp_path))
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "probe.json").read_text())  # a folder: probe.json in it
    assert doc["source"]["role"] == "context" and doc["source"]["layers"] == "last4"
    assert doc["source"]["feature_dim"] == 4 * 48  # the tiny recipe's width
    assert doc["cache"] == {"train": "miss", "test": "miss"}  # another encoder, other features
    assert set(doc["probes"]) == {"knn", "lowshot"} and list(doc["probes"]["lowshot"]["settings"]) == ["1_per_class"]
    assert "lowshot 1_per_class" in res.output


def test_probe_random_init_baseline_of_a_run(trained_run, tmp_path):
    run_dir, summary, *_ = trained_run
    res = invoke("probe", str(run_dir), "--probe", "knn", "--set", "probe.random_init_baseline=true",
                 "--output", str(tmp_path / "b.json"))
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "b.json").read_text())
    assert doc["probes"]["knn"]["accuracy"] == summary["probe"]["knn"]
    assert "random_init" in doc["baselines"] and "random init" in res.output


def test_probe_floors_pixels_and_timm(tmp_path):
    data = "{name: synthetic, num_train: 96, num_test: 48, image_size: 32, channels: 3}"
    res = invoke("probe", "pixels", "--data", data, "--probe", "knn,attentive", "--output", str(tmp_path))
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "probe.json").read_text())
    assert doc["source"]["kind"] == "pixels" and doc["source"]["feature_dim"] == 3 * 32 * 32
    assert "attentive" in doc["skipped"] and "note: attentive skipped" in res.output
    res = invoke("probe", "timm:resnet10t", "--data", data, "--probe", "knn", "--output", str(tmp_path / "t.json"))
    assert res.exit_code == 0, res.output
    first = json.loads((tmp_path / "t.json").read_text())
    assert first["source"]["kind"] == "timm" and first["source"]["encoder_class"] == "TimmCNNEncoder"
    res = invoke("probe", "timm:resnet10t", "--data", data, "--probe", "knn", "--output", str(tmp_path / "u.json"))
    again = json.loads((tmp_path / "u.json").read_text())
    assert again["source"]["content_hash"] == first["source"]["content_hash"]  # a seeded initialization
    assert again["cache"] == {"train": "hit", "test": "hit"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["probe", "no/such/run"], "no probe source"),
        (["probe", "pixels"], "--data is required"),
        (["probe", "timm:not_a_model", "--data", "{name: synthetic}"], "timm has no model"),
        (["probe", "pixels", "--data", "{name: synthetic}", "--probe", "linear,bogus"], "probe.kinds[1]"),
        (["probe", "pixels", "--data", "{name: synthetic}", "--set", "optim.lr=1"], "probe.* and data.*"),
        (["probe", "pixels", "--data", "{name: synthetic, bogus: 1}"], "data.bogus"),
        (["probe", "pixels", "--data", "{name: synthetic}", "--encoder", "context"], "single encoder"),
        (["probe", "pixels", "--data", "not a section"], "inline data section"),
    ],
)
def test_probe_user_errors_exit_2_with_one_message(args, message):
    res = runner.invoke(app, args, env={"COLUMNS": "250"})
    assert res.exit_code == 2, res.output
    assert "error:" in res.output and message in res.output and "Traceback" not in res.output


def test_probe_unknown_role_of_a_run(trained_run):
    run_dir, *_ = trained_run
    res = invoke("probe", str(run_dir), "--encoder", "student")
    assert res.exit_code == 2 and "no encoder 'student'" in res.output and "context, target" in res.output


def test_probe_needs_labels(monkeypatch):
    import torch

    from jepaflow.datasets.synthetic import SyntheticShapesDataset
    from jepaflow.registry import default_registry

    class Unlabelled(SyntheticShapesDataset):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.num_classes = None

        def __getitem__(self, i):
            return torch.zeros(3, 32, 32), -1

    real_get = default_registry().get
    monkeypatch.setattr(type(default_registry()), "get",
                        lambda self, kind, name: Unlabelled if name == "unlabelled" else real_get(kind, name))
    res = invoke("probe", "pixels", "--data", "{name: unlabelled}")
    assert res.exit_code == 2 and "need labels" in res.output


def test_probe_notes_flag_grid_edges_unconverged_fits_and_skips():
    from jepaflow.cli.probe import probe_notes

    doc = {"settings": {"linear_C": [0.1, 1.0, 10.0], "linear_max_iter": 1000},
           "skipped": {"attentive": "no tokens"},
           "probes": {"linear": {"hyperparameters": {"C": 10.0},
                                 "solver": {"0.1": {"converged": True}, "1": {"converged": True},
                                            "10": {"converged": False}, "refit": {"converged": False}}}}}
    notes = probe_notes(doc)
    assert notes[0] == "attentive skipped: no tokens"
    assert "C=10 is at an end of probe.linear_C" in notes[1]
    assert "C=10, the refit stopped at probe.linear_max_iter (1000)" in notes[2]
    doc["probes"]["linear"]["hyperparameters"]["C"] = 1.0
    doc["probes"]["linear"]["solver"] = {"refit": {"converged": True}}
    assert probe_notes({**doc, "skipped": {}}) == []


@pytest.mark.skipif(not FMNIST.is_dir(), reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
def test_pixel_floor_on_a_fashion_mnist_subset_matches_scikit_learn(tmp_path):
    """`jepaflow probe pixels` on 5,000 train / 2,000 test images (evenly spaced) against scikit-learn's
    LogisticRegression on the same standardized pixels and the same C: the linear probe solves the same convex
    problem, so the two agree to well under a point; both are far above chance (10%)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from jepaflow.probes.data import build_probe_data, resolve_data_section
    from jepaflow.probes.features import subset_indices

    recipe = Path(__file__).resolve().parents[2] / "recipes" / "fashion_mnist_ijepa.yaml"
    res = invoke("probe", "pixels", "--data", str(recipe), "--probe", "linear,knn", "--no-cache",
                 "--set", "probe.train_samples=5000", "--set", "probe.test_samples=2000",
                 "--set", "probe.linear_C=[1.0]", "--output", str(tmp_path))
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "probe.json").read_text())
    assert doc["data"]["splits"] == {"train": 5000, "fit": 4500, "val": 500, "test": 2000}
    assert doc["probes"]["linear"]["solver"]["refit"]["converged"]

    data = build_probe_data(resolve_data_section({"name": "fashion_mnist"}))

    def pixels(split, cap):
        items = [split[i] for i in subset_indices(len(split), cap)]
        return torch.stack([im for im, _ in items]).flatten(1).numpy(), np.array([y for _, y in items])

    x_tr, y_tr = pixels(data.train, 5000)
    x_te, y_te = pixels(data.test, 2000)
    scaler = StandardScaler().fit(x_tr)
    ref = LogisticRegression(C=1.0, tol=1e-4, max_iter=5000).fit(scaler.transform(x_tr), y_tr)
    ref_acc = float((ref.predict(scaler.transform(x_te)) == y_te).mean())
    ours = doc["probes"]["linear"]["accuracy"]
    assert ours > 0.75 and doc["probes"]["knn"]["accuracy"] > 0.7, doc["probes"]
    assert abs(ours - ref_acc) <= 0.005, (ours, ref_acc)
