"""Hand-made run folders and probe.json documents (schema jepaflow-probe v1, docs/probes.md) for compare's tests:
every number is chosen by the test, so intervals and verdicts can be checked by hand."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml

DATA = {"name": "synthetic", "num_train": 256, "num_test": 128, "image_size": 32, "channels": 3}
SPLITS = {"train": 256, "fit": 230, "val": 26, "test": 128}
SETTINGS = {"kinds": ["knn", "linear"], "encoder": None, "layers": "last", "train_samples": None,
            "test_samples": None, "val_fraction": 0.1, "seed": 0, "knn_k": 20, "knn_temperature": 0.07,
            "linear_C": [0.001, 0.01, 0.1, 1.0, 10.0], "linear_max_iter": 1000, "linear_tol": 0.0001}
RECIPE = {
    "seed": 0, "output_dir": "runs/x", "data": DATA,
    "encoder": {"name": "vit", "size": "tiny", "patch_size": 8, "img_size": 32, "in_chans": 3, "embed_dim": 48,
                "depth": 2, "num_heads": 2},
    "predictor": {"name": "vit_predictor", "embed_dim": 32, "depth": 1, "num_heads": 2},
    "masker": {"name": "multiblock", "mode": "fixed", "min_keep": 1},
    "target_updater": {"name": "ema"},
    "objective": {"name": "ijepa"},
    "optim": {"epochs": 2, "warmup_epochs": 1, "lr": 0.001},
    "train": {"batch_size": 32, "num_workers": 0, "log_every": 2, "progress": False, "max_steps": None},
    "probe": {"enabled": True, "kinds": ["knn", "linear"]},
}


def probe_doc(accuracies: dict[str, float], *, kind: str = "run", role: str | None = "target",
              settings: dict | None = None, data: dict | None = None, splits: dict | None = None,
              content_hash: str = "sha256:trained", baseline: dict[str, float] | None = None,
              baseline_hash: str | None = None, layers: str = "last") -> dict[str, Any]:
    probes: dict[str, Any] = {}
    for k, v in accuracies.items():
        if k.startswith("lowshot:"):
            probes.setdefault("lowshot", {"draws": 3, "settings": {}})["settings"][k.split(":", 1)[1]] = {
                "mean": v, "std": 0.0, "accuracies": [v, v, v]}
        else:
            probes[k] = {"accuracy": v, "hyperparameters": {}, "val_accuracy": None, "seconds": 0.1}
    doc = {
        "schema": "jepaflow-probe", "version": 1, "created": "2026-01-01T00:00:00+00:00",
        "source": {"kind": kind, "spec": "x", "path": None, "content_hash": content_hash, "role": role,
                   "layers": layers, "encoder_class": "VisionTransformerEncoder", "feature_dim": 48},
        "data": {"section": copy.deepcopy(data or DATA), "num_classes": 8, "splits": dict(splits or SPLITS)},
        "settings": copy.deepcopy(settings or SETTINGS),
        "environment": {}, "cache": {"train": "miss", "test": "miss"}, "probes": probes, "skipped": {},
        "seconds": {"total": 1.0},
    }
    if baseline is not None:
        doc["baselines"] = {"random_init": {
            "source": {"kind": "random_init", "content_hash": baseline_hash or "sha256:init"},
            "probes": {k: {"accuracy": v} for k, v in baseline.items()}, "skipped": {}, "seconds": {}}}
    return doc


def make_run(root: Path, name: str, seed: int, accuracies: dict[str, float], *, recipe_patch: dict | None = None,
             steps: int = 16, total_steps: int = 16, metrics: list[dict] | None = None, probe: dict | None = None,
             write_probe: bool = True, **probe_kwargs: Any) -> Path:
    """A finished run folder ``root/name/seed<seed>`` with the given probe accuracies."""
    run = root / name / f"seed{seed}"
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    recipe = copy.deepcopy(RECIPE)
    for section, value in (recipe_patch or {}).items():
        if isinstance(value, dict) and isinstance(recipe.get(section), dict):
            recipe[section].update(value)
        else:
            recipe[section] = value
    recipe["seed"] = seed
    recipe["output_dir"] = str(run)
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    (run / "checkpoints" / "last.pt").write_bytes(b"")
    (run / "env.json").write_text(json.dumps({"steps_per_epoch": 8, "total_steps": total_steps}))
    (run / "summary.json").write_text(json.dumps({"step": steps, "total_steps": total_steps,
                                                  "finished": steps >= total_steps}))
    if metrics is None:
        metrics = [{"step": s, "epoch": s / 8, "loss": 1.0 / s, "img_per_s": 64.0, "rankme": 10.0 + s}
                   for s in range(2, steps + 1, 2)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    if write_probe:
        doc = probe if probe is not None else probe_doc(accuracies, **probe_kwargs)
        (run / "probe.json").write_text(json.dumps(doc))
    return run


def make_floor(root: Path, name: str, accuracies: dict[str, float], kind: str = "pixels", **kwargs: Any) -> Path:
    """A standalone probe.json (``jepaflow probe pixels``), in ``root/name/``."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    doc = probe_doc(accuracies, kind=kind, role=None, content_hash=f"sha256:{kind}", **kwargs)
    (folder / "probe.json").write_text(json.dumps(doc))
    return folder


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PLOTS = ("accuracy.png", "accuracy_vs_compute.png", "loss.png", "rankme.png")


def assert_plots_linked(out: Path, md: str) -> None:
    """Every compare plot is a real PNG of some size in ``out`` and is shown in ``compare.md``."""
    for name in PLOTS:
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, name
        assert f"![{name[:-4]}]({name})" in md
