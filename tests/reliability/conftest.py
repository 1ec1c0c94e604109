"""Fixtures of the reliability suite."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml


@pytest.fixture
def recipe_file(tiny_recipe, tmp_path):
    """A function writing the tiny recipe (deep-merged with a patch) to a YAML file; returns its path."""

    def write(patch: dict | None = None, name: str = "recipe.yaml") -> Path:
        raw = tiny_recipe(patch)
        path = tmp_path / name
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        return path

    return write
