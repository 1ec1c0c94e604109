"""benchmarks/compare_fashion_mnist.py without training: the budget it gives each recipe (epochs, warmup and EMA
ramp scaled together), the method selection, and the sweep it would run (every built-in method's Fashion-MNIST
recipe validates with the budget, full and --smoke). The run itself takes minutes even as a smoke test; it is not
part of the suite."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from jepaflow.config import load_recipe

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "compare_fashion_mnist.py"
spec = importlib.util.spec_from_file_location("compare_fashion_mnist", SCRIPT)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_every_built_in_method_has_a_fashion_mnist_recipe_with_the_same_encoder_and_budget():
    assert bench.METHODS == ("ijepa", "mae", "simclr", "vicreg", "byol", "data2vec", "lejepa")
    shapes = set()
    for method in bench.METHODS:
        r = load_recipe(bench.recipe_path(method))
        assert r.components["objective"].name == method
        d = r.to_dict()
        enc = d["encoder"]
        shapes.add((d["data"]["name"], d["data"]["image_size"], enc["embed_dim"], enc["depth"], enc["patch_size"],
                    d["train"]["batch_size"], d["optim"]["epochs"]))
    assert len(shapes) == 1, shapes  # one encoder, batch and epoch count: the budget is equal by construction


def test_budget_scales_warmup_and_the_ema_ramp_with_the_epochs():
    assert bench.budget_overrides(bench.recipe_path("ijepa"), 1) == ["optim.epochs=1", "optim.warmup_epochs=0.166667"]
    assert bench.budget_overrides(bench.recipe_path("ijepa"), 12)[1] == "optim.warmup_epochs=2.0"
    # data2vec's ramp: 702 of 6 x 234 steps (half the run) stays half the run
    assert bench.budget_overrides(bench.recipe_path("data2vec"), 1)[-1] == "target_updater.ramp_steps=117"
    assert bench.budget_overrides(bench.recipe_path("data2vec"), 2, 512)[-1] == "target_updater.ramp_steps=2"


def test_methods_are_chosen_by_name_and_checked():
    assert bench.parse_methods(None, smoke=False) == list(bench.METHODS)
    assert bench.parse_methods(None, smoke=True) == ["ijepa", "mae"]
    assert bench.parse_methods("MAE, ijepa", smoke=False) == ["mae", "ijepa"]
    for bad in ("ijepa,dino", "mae,mae", ","):
        with pytest.raises(SystemExit, match="--methods"):
            bench.parse_methods(bad, smoke=False)


@pytest.mark.parametrize("smoke", [False, True])
def test_the_sweep_it_would_run_validates(tmp_path, smoke):
    from jepaflow.sweep import plan

    paths = [bench.recipe_path(m) for m in bench.METHODS]
    images = bench.SMOKE_IMAGES if smoke else 60_000
    per_recipe = {str(p): bench.budget_overrides(p, 1, images) + (bench.SMOKE_OVERRIDES if smoke else [])
                  for p in paths}
    runs = plan(paths, [0, 1, 2], ["probe.kinds=[linear, knn]"], tmp_path / "sw", per_recipe=per_recipe)
    assert len(runs) == 21 and {r.state for r in runs} == {"new"}
    for r in runs:
        assert r.recipe["optim"]["epochs"] == 1 and r.recipe["seed"] in (0, 1, 2)
        assert r.recipe["data"].get("limit") == (512 if smoke else None)
    assert not (tmp_path / "sw").exists()  # planning writes nothing
