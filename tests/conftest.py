"""Shared fixtures: a tiny but complete I-JEPA recipe that trains in seconds on generated images."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch
import yaml

# Two cores on the CI machine: keep each test process to one BLAS/OpenMP thread unless a test says otherwise.
torch.set_num_threads(int(os.environ.get("JEPAFLOW_TEST_THREADS", "1")))

TINY_RECIPE = {
    "seed": 0,
    "output_dir": "runs/test",
    "data": {"name": "synthetic", "num_train": 256, "num_test": 128, "image_size": 32, "channels": 3},
    "encoder": {"name": "vit", "size": "tiny", "patch_size": 8, "img_size": 32, "in_chans": 3,
                "embed_dim": 48, "depth": 2, "num_heads": 2},
    "predictor": {"name": "vit_predictor", "embed_dim": 32, "depth": 1, "num_heads": 2},
    "masker": {"name": "multiblock", "mode": "fixed", "min_keep": 1},
    "target_updater": {"name": "ema"},
    "objective": {"name": "ijepa"},
    "optim": {"epochs": 2, "warmup_epochs": 1, "lr": 1.0e-3, "start_lr": 1.0e-4},
    "train": {"batch_size": 32, "num_workers": 0, "log_every": 1, "progress": False},
}


def merge(base: dict, patch: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in patch.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@pytest.fixture(autouse=True)
def _feature_cache(tmp_path_factory, monkeypatch):
    """Probes cache features under $JEPAFLOW_CACHE: a fresh folder per test, never the user's ~/.cache."""
    monkeypatch.setenv("JEPAFLOW_CACHE", str(tmp_path_factory.mktemp("feature-cache")))


@pytest.fixture
def tiny_recipe(tmp_path):
    """A function returning a tiny recipe dict (deep-merged with the given patch), its output under tmp_path."""

    def make(patch: dict | None = None) -> dict:
        r = merge(TINY_RECIPE, {"output_dir": str(tmp_path / "run")})
        return merge(r, patch or {})

    return make


@pytest.fixture
def recipe_file(tiny_recipe, tmp_path):
    """A function writing the tiny recipe (deep-merged with a patch) to a YAML file; returns its path."""

    def write(patch: dict | None = None, name: str = "recipe.yaml") -> Path:
        raw = tiny_recipe(patch)
        path = tmp_path / name
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        return path

    return write
