"""Subprocess entry for engine tests: ``python run_recipe_script.py RECIPE.yaml [--resume]``."""

import sys

import torch

torch.set_num_threads(1)

from jepaflow.config import load_recipe  # noqa: E402
from jepaflow.engine.trainer import train  # noqa: E402

if __name__ == "__main__":
    summary = train(load_recipe(sys.argv[1]), resume="--resume" in sys.argv)
    sys.exit(summary.get("exit_code", 0))
