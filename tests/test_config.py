"""Recipes: ``--set`` overrides, defaults and round trips, and the format of every validation error."""

from __future__ import annotations

import copy

import pytest
import yaml

from jepaflow.config import Recipe, apply_overrides, load_recipe, read_yaml
from jepaflow.errors import JepaflowError, RecipeError
from jepaflow.registry import default_registry

SMALL = {
    "seed": 3,
    "output_dir": "runs/small",
    "data": {"name": "synthetic", "image_size": 32},
    "encoder": {"name": "vit", "size": "tiny", "patch_size": 8, "img_size": 32, "depth": 2},
    "predictor": {"name": "vit_predictor", "embed_dim": 32, "depth": 1, "num_heads": 2},
    "masker": {"name": "multiblock"},
    "target_updater": {"name": "ema"},
    "objective": {"name": "ijepa"},
    "optim": {"epochs": 2, "warmup_epochs": 1},
    "train": {"batch_size": 8, "num_workers": 0},
}

PLUGINS = [("dataset", "synthetic"), ("encoder", "vit"), ("predictor", "vit_predictor"), ("masker", "multiblock"),
           ("target_updater", "ema"), ("objective", "ijepa")]


@pytest.fixture(scope="module")
def builtins_importable() -> None:
    """Skip (with the reason) while a built-in plugin of the small recipe cannot be imported yet."""
    reg = default_registry()
    broken = []
    for kind, name in PLUGINS:
        try:
            reg.get(kind, name)
        except JepaflowError as exc:
            broken.append(f"{kind} {name}: {exc.problem}")
    assert not broken, "built-in plugins failed to import: " + "; ".join(broken)


def small(**patch) -> dict:
    out = copy.deepcopy(SMALL)
    for section, value in patch.items():
        if value is None:
            out.pop(section, None)
        elif isinstance(value, dict) and isinstance(out.get(section), dict):
            out[section].update(value)
        else:
            out[section] = value
    return out


def issues_of(raw: dict, overrides: list[str] | None = None) -> dict[str, str]:
    with pytest.raises(RecipeError) as exc:
        load_recipe(raw, overrides=overrides)
    return dict(exc.value.issues)


# ------------------------------------------------------------------------------------------------ overrides
def test_overrides_nested_typed_and_new_keys():
    raw = {"seed": 0, "optim": {"lr": 0.1}, "masker": {"name": "multiblock"}}
    out = apply_overrides(
        raw,
        [
            "optim.lr=2.5e-4",  # nested; YAML float (with a dot: YAML 1.1 needs it)
            "seed=7",  # int
            "train.progress=false",  # bool, in a section the recipe did not have
            "masker.target_scale=[0.1, 0.3]",  # list
            "masker.mode=fixed",  # str
            "output_dir=runs/a=b",  # only the first '=' splits
            "probe.kinds=[knn]",
            "encoder.embed_dim=null",
        ],
    )
    assert out == {
        "seed": 7,
        "output_dir": "runs/a=b",
        "optim": {"lr": 2.5e-4},
        "masker": {"name": "multiblock", "target_scale": [0.1, 0.3], "mode": "fixed"},
        "train": {"progress": False},
        "probe": {"kinds": ["knn"]},
        "encoder": {"embed_dim": None},
    }
    assert raw == {"seed": 0, "optim": {"lr": 0.1}, "masker": {"name": "multiblock"}}, "input must not change"


def test_override_errors_are_collected_with_their_paths():
    with pytest.raises(RecipeError) as exc:
        apply_overrides({"seed": 0}, ["optim.lr", "seed.x=1", "=3", "train.batch_size=[1,"])
    issues = dict(exc.value.issues)
    assert set(issues) == {"optim.lr", "seed", "=3", "train.batch_size"}
    assert "PATH=VALUE" in issues["optim.lr"]
    assert "not a section" in issues["seed"]
    assert "empty path" in issues["=3"]
    assert "not valid YAML" in issues["train.batch_size"]
    assert str(exc.value).startswith("4 problem(s) in --set:")


# ------------------------------------------------------------------------------------------------ valid recipes
def test_defaults_are_filled_and_to_dict_round_trips(builtins_importable):
    recipe = load_recipe(small())
    assert isinstance(recipe, Recipe)
    assert (recipe.seed, recipe.output_dir, recipe.source) == (3, "runs/small", None)
    # Engine defaults (I-JEPA appendix values) and plugin defaults are filled.
    assert recipe.optim.lr == 1e-3 and recipe.optim.weight_decay == 0.04 and recipe.optim.epochs == 2
    assert recipe.train.batch_size == 8 and recipe.train.precision == "auto"
    masker = recipe.component("masker")
    assert masker.name == "multiblock" and masker.config.num_targets == 4
    assert masker.config.target_scale == (0.15, 0.2)
    assert recipe.component("encoder").config.patch_size == 8
    assert list(recipe.components) == ["data", "encoder", "predictor", "masker", "target_updater", "objective"]

    resolved = recipe.to_dict()
    assert resolved["masker"]["target_scale"] == [0.15, 0.2]
    assert resolved["optim"]["betas"] == [0.9, 0.999]
    assert load_recipe(resolved) == recipe
    assert load_recipe(yaml.safe_load(recipe.to_yaml())) == recipe
    assert load_recipe(recipe.to_dict()).to_dict() == resolved


def test_overrides_apply_before_validation(builtins_importable, tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(small()))
    recipe = load_recipe(path, overrides=["optim.lr=0.01", "masker.num_targets=2", "train.max_steps=3"])
    assert recipe.optim.lr == 0.01 and isinstance(recipe.optim.lr, float)
    assert recipe.component("masker").config.num_targets == 2
    assert recipe.train.max_steps == 3
    assert recipe.source == str(path)


# ------------------------------------------------------------------------------------------------ error paths
def test_engine_section_error_paths():
    issues = issues_of(
        small(optim={"lr": "fast", "betas": [0.9, "x"]}, train={"batch_size": 0, "precision": "fp8"},
              probe={"bogus": 1})
    )
    assert "optim.lr" in issues and "valid number" in issues["optim.lr"] and "'fast'" in issues["optim.lr"]
    assert "optim.betas[1]" in issues
    assert "train.batch_size" in issues and "greater than or equal to 1" in issues["train.batch_size"]
    assert issues["train.precision"].startswith("must be one of")
    assert issues["probe.bogus"].startswith("unknown field")


def test_plugin_section_error_paths(builtins_importable):
    issues = issues_of(
        small(masker={"target_scale": ["big", 0.2], "mode": "exact", "bogus": True}, encoder={"depth": 0})
    )
    assert set(issues) == {"masker.target_scale[0]", "masker.mode", "masker.bogus", "encoder.depth"}
    assert "'big'" in issues["masker.target_scale[0]"]
    assert "official" in issues["masker.mode"] and "fixed" in issues["masker.mode"]
    # An unknown field names the fields the plugin does accept, whatever its value.
    assert issues["masker.bogus"].startswith("unknown field")
    assert "masker fields are: name, mode, num_targets" in issues["masker.bogus"]
    issues = issues_of(small(masker={"bogus": {"a": 1}}))
    assert "masker fields are: name, mode, num_targets" in issues["masker.bogus"]


def test_every_problem_is_reported_at_once(builtins_importable):
    with pytest.raises(RecipeError) as exc:
        load_recipe(small(masker={"bogus": 1}, optim={"lr": "x"}, train={"batch_size": -1}))
    assert [p for p, _ in exc.value.issues] == ["optim.lr", "train.batch_size", "masker.bogus"]
    text = str(exc.value)
    assert text.startswith("3 problem(s):") and text.count("\n  ") >= 3
    assert exc.value.fix and exc.value.exit_code == 2


def test_unknown_and_missing_plugin_names():
    issues = issues_of(small(encoder={"name": "vitt"}, masker={"name": None}))
    assert "no encoder plugin named 'vitt'" in issues["encoder.name"]
    assert "timm_vit, vit" in issues["encoder.name"]
    assert issues["masker.name"].startswith("missing: name the masker plugin to use") and "multiblock" in issues[
        "masker.name"]


def test_missing_and_malformed_sections():
    issues = issues_of({"encoder": 3, "objective": {"name": "ijepa"}})
    assert issues["data"] == "Field required"
    assert "valid dictionary" in issues["encoder"]


def test_objective_requires_its_sections(builtins_importable):
    issues = issues_of(small(masker=None, target_updater=None))
    assert set(issues) == {"masker", "target_updater"}
    assert issues["masker"].startswith("missing: objective 'ijepa' needs a masker (") and "multiblock" in issues[
        "masker"]
    assert "needs a target_updater" in issues["target_updater"]


def test_encoder_and_data_must_agree(builtins_importable):
    issues = issues_of(small(encoder={"img_size": 64, "in_chans": 1}, data={"channels": 3}))
    assert issues["encoder.img_size"] == "is 64 but data.image_size is 32; they must agree"
    assert issues["encoder.in_chans"] == "is 1 but data.channels is 3; they must agree"


def test_cross_field_engine_checks():
    issues = issues_of(small(optim={"epochs": 2, "warmup_epochs": 5, "accum_steps": 3}))
    assert "warmup_epochs (5.0) is longer than the run" in issues["optim"]
    issues = issues_of(small(optim={"accum_steps": 3}))
    assert issues["train.batch_size"] == "must be a multiple of optim.accum_steps (3)"


def test_yaml_file_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: 0\ndata:\n  name: synthetic\n   image_size: 32\n")
    with pytest.raises(RecipeError) as exc:
        read_yaml(bad)
    ((where, msg),) = exc.value.issues
    assert where == "<yaml line 4, column 14>" and msg.startswith("not valid YAML")
    assert str(bad) in str(exc.value)

    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(RecipeError, match="a recipe is a YAML mapping"):
        load_recipe(tmp_path / "list.yaml")
    with pytest.raises(RecipeError, match="no recipe at"):
        load_recipe(tmp_path / "missing.yaml")


def test_an_encoder_without_a_capability_the_objective_needs_is_a_recipe_error(builtins_importable):
    # I-JEPA drops patches from the context encoder's input; a CNN cannot. Found from class attributes, before
    # anything is built, with the --set that swapped the whole encoder section.
    problems = issues_of(SMALL, ["encoder={name: timm_cnn, model_name: resnet18, img_size: 32}"])
    assert list(problems) == ["encoder.name"]
    msg = problems["encoder.name"]
    assert msg.startswith("encoder 'timm_cnn' cannot encode only the patches at given indices")
    assert "[drop_patches], which objective 'ijepa' needs" in msg
    assert "encoders that can: timm_vit, vit" in msg
    # data2vec needs a mask token, which timm_vit does not offer; vit does
    d2v = small(predictor=None, objective={"name": "data2vec", "top_k_layers": 1})
    problems = issues_of(d2v, ["encoder={name: timm_vit, model_name: vit_tiny_patch16_224, img_size: 32}"])
    assert "[mask_token], which objective 'data2vec' needs; encoders that can: vit " in problems["encoder.name"]
    load_recipe(d2v)  # with the vit encoder it is fine
    # objectives that only pool whole images take any encoder
    simclr = small(predictor=None, masker=None, target_updater=None, objective={"name": "simclr"},
                   views={"name": "two_view"}, projector={"name": "mlp"})
    simclr["encoder"] = {"name": "timm_cnn", "model_name": "resnet18", "img_size": 32}
    load_recipe(simclr)


def test_values_are_strict_except_lossless_int_to_float_and_list_to_tuple(builtins_importable):
    problems = issues_of(small(encoder={"depth": True}, optim={"epochs": "2"}, train={"num_workers": 1.0},
                               masker={"allow_overlap": 1}))
    assert problems == {
        "optim.epochs": "Input should be a valid integer (got '2')",
        "train.num_workers": "Input should be a valid integer (got 1.0)",
        "encoder.depth": "Input should be a valid integer (got True)",
        "masker.allow_overlap": "Input should be a valid boolean (got 1)",
    }
    r = load_recipe(small(optim={"lr": 1, "betas": [0.9, 0.95]}, masker={"target_scale": [0.1, 0.2]}),
                    overrides=["optim.final_lr=1e-6", "masker.context_scale=[1, 1]"])
    assert r.optim.lr == 1.0 and isinstance(r.optim.lr, float) and r.optim.betas == (0.9, 0.95)
    assert r.optim.final_lr == 1e-6  # YAML 1.2 float: no dot needed
    masker = r.components["masker"].config
    assert masker.target_scale == (0.1, 0.2) and masker.context_scale == (1.0, 1.0)
    assert isinstance(masker.context_scale[0], float)
    # the resolved recipe (tuples written as lists) reloads to the same thing
    assert load_recipe(yaml.safe_load(r.to_yaml())).to_dict() == r.to_dict()


def test_setting_a_section_to_a_mapping_replaces_it(builtins_importable):
    # multiblock's fields (mode, min_keep, ...) must not leak into the random masker's section
    raw = small(masker={"mode": "fixed", "min_keep": 2})
    r = load_recipe(raw, overrides=["masker={name: random, mask_ratio: 0.6}"])
    assert r.components["masker"].name == "random" and r.to_dict()["masker"] == {"name": "random", "mask_ratio": 0.6}
    # changing only the name keeps the other fields, which the new plugin then refuses
    problems = issues_of(raw, ["masker.name=random"])
    assert set(problems) == {"masker.mode", "masker.min_keep"}


def test_an_unknown_plugin_gets_its_own_fix_once(builtins_importable):
    with pytest.raises(RecipeError) as exc:
        load_recipe(small(masker={"name": "stripez"}))
    err = exc.value
    assert dict(err.issues)["masker.name"].startswith("no masker plugin named 'stripez' (installed: ")
    assert "fix" not in dict(err.issues)["masker.name"]
    assert err.fix.startswith("check the spelling, or install the package that provides it")
    assert str(err).count("fix:") == 1
    with pytest.raises(RecipeError) as exc:  # with another problem as well: one fix line naming both remedies
        load_recipe(small(masker={"name": "stripez"}, optim={"lr": -1}))
    assert str(exc.value).count("fix:") == 1 and exc.value.fix.endswith("at the other paths")
