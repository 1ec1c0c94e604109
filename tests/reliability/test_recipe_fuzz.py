"""Recipe fuzzing with hypothesis: recipes and ``--set`` overrides generated from the shipped recipes (every
method), with wrong types, missing and unknown fields, out-of-range, non-finite and huge numbers, unicode, deep
nesting, anchors and aliases, tags, duplicate keys and other encodings.

The property, for every generated input: ``load_recipe`` either returns a recipe, or raises a
:class:`RecipeError` whose every issue names a YAML path (never another exception, never an unbounded message);
and a recipe that validates also builds: objective (on the ``meta`` device), optimizer, schedules, masker (checked
on the encoder's grid and sampled), target updater, view sampler and data set. A sample also goes through the
CLI (``jepaflow validate``): exit 0 or 2, never a traceback.

The number of examples of each kind is in :data:`EXAMPLES`; outcomes are counted in :data:`OUTCOMES` and
checked (and printed, with ``-s``) by the last test. ``JEPAFLOW_FUZZ_SCALE=10`` runs ten times as many.
"""

from __future__ import annotations

import copy
import math
import os
import re
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from clikit import invoke

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from jepaflow.config import load_recipe  # noqa: E402
from jepaflow.engine.build import (  # noqa: E402
    build_dataset,
    build_masker,
    build_objective,
    build_target_updater,
    build_views,
)
from jepaflow.engine.optim import build_optimizer  # noqa: E402
from jepaflow.errors import JepaflowError, RecipeError  # noqa: E402
from jepaflow.schedules import lr_at, weight_decay_at  # noqa: E402
from jepaflow.testing import check_masker  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SCALE = int(os.environ.get("JEPAFLOW_FUZZ_SCALE", "1"))
#: examples per test (all generated and checked; hypothesis adds a few of its own when it shrinks a failure)
EXAMPLES = {"dict": 400 * SCALE, "plausible": 300 * SCALE, "yaml": 350 * SCALE, "overrides": 350 * SCALE,
            "cli": 60 * SCALE}
OUTCOMES: Counter = Counter()


def base_recipes() -> dict[str, dict]:
    """The shipped CPU recipes of every method, with generated data (no files read) and a small batch."""
    out = {}
    for path in sorted(REPO.glob("recipes/fashion_mnist_*.yaml")) + [REPO / "recipes" / "quickstart.yaml"]:
        raw = yaml.safe_load(path.read_text())
        raw["data"] = {"name": "synthetic", "image_size": raw["data"]["image_size"],
                       "channels": raw["data"]["channels"], "num_train": 64, "num_test": 32}
        raw["train"] = {**raw.get("train", {}), "batch_size": 32, "num_workers": 0}
        raw["probe"] = {**raw.get("probe", {}), "enabled": False}
        raw["output_dir"] = "runs/fuzz"
        out[path.stem] = raw
    return out


BASES = base_recipes()
RESOLVED = {name: load_recipe(raw).to_dict() for name, raw in BASES.items()}


def leaf_paths(tree, prefix=()) -> list[tuple]:
    out = []
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else []
    for key, value in items:
        out.append((*prefix, key))
        out += leaf_paths(value, (*prefix, key))
    return out


PATHS = {name: leaf_paths(r) for name, r in RESOLVED.items()}


# ------------------------------------------------------------------------------------------------ values
NASTY_NUMBERS = [0, -1, 1, 2, 3, 7, 2**31, 2**63 - 1, 2**63, -(2**63) - 1, 2**64, 10**30, 10**400, 1e308, -1e308,
                 5e-324, -0.0, 1e-300, float("inf"), float("-inf"), float("nan"), 0.5, 0.999999, 1.000001, 1e6]


def deep(depth: int):
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.sampled_from(NASTY_NUMBERS),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30), st.text(min_size=200, max_size=3000),
    st.sampled_from(["", " ", "name", "vit", "ijepa", "multiblock", "\x00", "\u202e", "ü", "1e3", ".inf", "yes"]),
)
values = st.one_of(
    scalars,
    st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                 | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8),
    st.integers(20, 400).map(deep),
)


def perturb_number(original):
    """Values near a number, mostly plausible (the same type, up to a few times its size: these must validate
    and build, or be refused), sometimes far off: its negation, scaled far up and down, non-finite."""
    if isinstance(original, bool) or not isinstance(original, (int, float)):
        return values
    if isinstance(original, float) and not (math.isfinite(original) and abs(original) < 1e300):
        return values
    if isinstance(original, int) and abs(original) > 2**80:
        return values
    top = max(2 * abs(original), 16 if isinstance(original, int) else 1.0)
    plausible = st.integers(0, int(top)) if isinstance(original, int) else st.floats(0, float(top))
    return st.one_of(
        plausible, plausible, plausible,
        st.sampled_from([-original, original * 10, original * 1e6, original / 1e6, original + 1, original - 1,
                         math.nextafter(float(original), math.inf), 0]),
        st.integers(-(2**70), 2**70), st.floats(-1e10, 1e10), st.floats(allow_nan=True, allow_infinity=True))


def value_at(tree, path):
    node = tree
    for key in path:
        node = node[key]
    return node


# ------------------------------------------------------------------------------------------------ mutations
def set_path(tree, path, value) -> None:
    node = tree
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


def delete_path(tree, path) -> None:
    node = tree
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]


@st.composite
def mutated_recipe(draw) -> dict:
    name = draw(st.sampled_from(sorted(BASES)))
    tree = copy.deepcopy(draw(st.sampled_from([BASES[name], RESOLVED[name]])))
    for _ in range(draw(st.sampled_from([1, 1, 1, 2, 2, 3, 4]))):
        paths = leaf_paths(tree)
        op = draw(st.sampled_from(["perturb"] * 5 + ["set", "set", "delete", "unknown", "section", "plugin"]))
        if op in ("set", "perturb") and paths:
            path = draw(st.sampled_from(paths))
            node = tree
            for key in path:
                node = node[key]
            value = draw(perturb_number(node) if op == "perturb" else values)
            set_path(tree, path, value)
        elif op == "delete" and paths:
            delete_path(tree, draw(st.sampled_from(paths)))
        elif op == "unknown":
            sections = [k for k, v in tree.items() if isinstance(v, dict)]
            target = tree[draw(st.sampled_from(sections))] if sections and draw(st.booleans()) else tree
            target[draw(st.text(min_size=1, max_size=20))] = draw(values)
        elif op == "section":
            tree[draw(st.sampled_from(["data", "encoder", "optim", "train", "probe", "masker", "objective",
                                       "views", "projector", "predictor"]))] = draw(values)
        elif op == "plugin":
            section = draw(st.sampled_from(["encoder", "predictor", "masker", "objective", "views", "data",
                                            "target_updater", "projector", "prediction_head"]))
            if isinstance(tree.get(section), dict):
                tree[section]["name"] = draw(st.one_of(
                    st.sampled_from(["vit", "mae", "simclr", "random", "multiblock", "two_view", "ema", "mlp",
                                     "synthetic", "digits", "byol", "lejepa", "vicreg", "data2vec", "image_folder"]),
                    st.text(max_size=20)))
    return tree


@st.composite
def plausible_recipe(draw) -> dict:
    """A shipped recipe with 1 to 6 of its numbers changed to plausible values (same type, up to a few times
    their size): most validate, and every one that does must build."""
    name = draw(st.sampled_from(sorted(BASES)))
    tree = copy.deepcopy(RESOLVED[name])
    numeric = [p for p in PATHS[name] if isinstance(value_at(tree, p), (int, float))
               and not isinstance(value_at(tree, p), bool)]
    for path in draw(st.lists(st.sampled_from(numeric), min_size=1, max_size=4, unique=True)):
        original = value_at(tree, path)
        if isinstance(original, int):
            value = draw(st.integers(min(original, 1), max(2 * original, 16)))
        else:
            near = st.floats(original / 4, original * 2) if original > 0 else st.floats(0, 1)
            value = draw(st.one_of(near, near, st.floats(0, max(2 * original, 1.0)),
                                   st.sampled_from([0.0, original / 2])))
        set_path(tree, path, value)
    return tree


# ------------------------------------------------------------------------------------------------ the property
SECTIONS = ("data", "encoder", "predictor", "masker", "views", "projector", "prediction_head", "target_updater",
            "objective")


def validate_builds(recipe):
    """What ``jepaflow validate`` builds after ``load_recipe``: the objective on the meta device, and the masker,
    checked on the encoder's patch grid and sampled once. These checks need the built modules (a masker's
    blocks against the grid, a predictor's heads inherited from the encoder); they may refuse the recipe with
    one JepaflowError naming the section. Returns the objective."""
    with torch.device("meta"):
        objective = build_objective(recipe)
    grid = tuple(objective.representation_encoder().grid_size)
    masker = build_masker(recipe)
    if masker is not None:
        check_masker(masker, grid, 2, name=recipe.components["masker"].name)  # what validate and run call
    return objective


def builds(recipe, objective) -> None:
    """Everything else a run builds before its first step; a recipe that passed validate must get through."""
    optimizer = build_optimizer(objective, recipe.optim)
    assert optimizer.param_groups
    spe = 10  # steps per epoch of a small data set
    total = int(recipe.optim.ipe_scale * recipe.optim.epochs * spe)
    warmup = int(recipe.optim.warmup_epochs * spe)
    o = recipe.optim
    for step in (0, warmup, total // 2, max(total - 1, 0)):
        assert math.isfinite(lr_at(step, warmup, total, o.start_lr, o.lr, o.final_lr))
        assert math.isfinite(weight_decay_at(step, total, o.weight_decay, o.final_weight_decay))
    build_target_updater(recipe)
    build_views(recipe)
    dataset = build_dataset(recipe, "train", augment=True)
    assert len(dataset) > 0


ISSUE_PATH = re.compile(r"^(<root>|<file>|<yaml [^>]*>|[^\s].*)$")


def check(load, kind: str) -> None:
    try:
        recipe = load()
    except RecipeError as exc:
        assert exc.issues, "a RecipeError without issues"
        for path, message in exc.issues:
            assert isinstance(path, str) and ISSUE_PATH.match(path), path
            assert isinstance(message, str) and message and len(message) <= 2000, message[:200]
        assert len(str(exc)) < 30_000
        OUTCOMES[f"{kind}: refused with a YAML path"] += 1
        return
    try:
        objective = validate_builds(recipe)
    except JepaflowError as exc:
        text = f"{exc.problem} {exc.fix}"
        assert any(s in text for s in SECTIONS), text[:500]
        assert len(text) < 5000
        OUTCOMES[f"{kind}: refused by validate's build checks (message names the section)"] += 1
        return
    builds(recipe, objective)
    OUTCOMES[f"{kind}: validated and built"] += 1


FUZZ = settings(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much, HealthCheck.large_base_example])


@pytest.mark.slow
@settings(FUZZ, max_examples=EXAMPLES["dict"])
@given(tree=mutated_recipe())
def test_fuzz_recipe_dicts(tree):
    OUTCOMES["dict recipes"] += 1
    check(lambda: load_recipe(tree), "dict recipes")


@pytest.mark.slow
@settings(FUZZ, max_examples=EXAMPLES["plausible"])
@given(tree=plausible_recipe())
def test_fuzz_plausible_recipes_build(tree):
    OUTCOMES["plausible recipes"] += 1
    check(lambda: load_recipe(tree), "plausible recipes")


# ------------------------------------------------------------------------------------------------ YAML text
TAGS = ["!!python/object/apply:os.system ['true']", "!!binary aGk=", "!custom 3", "!!set {a}", "!!str 3",
        "!!int '12'", "!!float 1", "!!timestamp 2001-12-14", "!!omap [a: 1]", "!!null ''", "!!bool yes"]


@st.composite
def yaml_text(draw) -> bytes:
    tree = draw(mutated_recipe())
    try:
        text = yaml.safe_dump(tree, sort_keys=False, allow_unicode=draw(st.booleans()))
    except (yaml.YAMLError, ValueError, RecursionError):
        text = "seed: 0\n"
    lines = text.splitlines()
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["duplicate", "anchor", "bomb", "tag", "deep", "garbage", "indent", "merge"]))
        i = draw(st.integers(0, max(len(lines) - 1, 0)))
        if op == "duplicate" and lines:
            lines.insert(i, lines[i])
        elif op == "anchor" and lines and ":" in lines[i] and not lines[i].rstrip().endswith(":"):
            key, _, value = lines[i].partition(":")
            lines[i] = f"{key}: &anc{value}"
            lines.append("aliased: *anc")
        elif op == "bomb":
            levels = draw(st.integers(2, 9))
            lines[:0] = ["b0: &b0 [x, x, x, x, x, x, x, x, x]"] + [
                f"b{k}: &b{k} [" + ", ".join([f"*b{k - 1}"] * 9) + "]" for k in range(1, levels)]
            lines.append(f"seed: *b{levels - 1}")
        elif op == "tag" and lines and ":" in lines[i]:
            key, _, _ = lines[i].partition(":")
            if key.strip() and not key.strip().startswith("-"):
                lines[i] = f"{key}: {draw(st.sampled_from(TAGS))}"
        elif op == "deep":
            depth = draw(st.integers(30, 3000))
            lines.append("deep: " + "[" * depth + "]" * (depth if draw(st.booleans()) else 0))
        elif op == "garbage":
            lines.insert(i, draw(st.text(max_size=40)))
        elif op == "indent" and lines:
            lines[i] = " " * draw(st.integers(1, 7)) + lines[i]
        elif op == "merge":
            lines.append("mergebase: &mb {lr: 0.1}")
            lines.append("optim2: {<<: *mb, lr: 0.2}")
    text = "\n".join(lines) + "\n"
    encoding = draw(st.sampled_from(["utf-8"] * 6 + ["utf-16", "latin-1", "utf-8-sig", "bytes"]))
    if encoding == "bytes":
        return text.encode("utf-8", "surrogatepass") + draw(st.binary(max_size=50))
    return text.encode(encoding, errors="replace")


@pytest.mark.slow
@settings(FUZZ, max_examples=EXAMPLES["yaml"])
@given(data=yaml_text())
def test_fuzz_recipe_files(tmp_path_factory, data):
    OUTCOMES["recipe files"] += 1
    path = tmp_path_factory.getbasetemp() / "fuzz.yaml"
    path.write_bytes(data)
    check(lambda: load_recipe(path), "recipe files")


# ------------------------------------------------------------------------------------------------ --set overrides
@st.composite
def overrides(draw) -> tuple[str, list[str]]:
    name = draw(st.sampled_from(sorted(BASES)))
    items = []
    for _ in range(draw(st.integers(1, 4))):
        if draw(st.integers(0, 9)) == 0:
            items.append(draw(st.text(max_size=30)))  # anything, "=" or not
            continue
        if draw(st.integers(0, 2)):  # a real field, a value near its own
            path = draw(st.sampled_from([p for p in PATHS[name] if all(isinstance(k, str) for k in p)]))
            original = value_at(RESOLVED[name], path)
            value = draw(perturb_number(original) if isinstance(original, (int, float)) else values)
            try:
                text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
            except (yaml.YAMLError, RecursionError):
                text = "null"
            if text.endswith("\n..."):
                text = text[: -len("\n...")]
            items.append(".".join(path) + "=" + text[:5000])
            continue
        path = draw(st.one_of(
            st.sampled_from(PATHS[name]).map(lambda p: ".".join(str(k) for k in p)),
            st.text(min_size=0, max_size=30),
            st.sampled_from(["a..b", ".", "optim.", "optim.lr.x", "seed.x", "...", "train.batch_size.0"]),
        ))
        value = draw(st.one_of(
            values.map(lambda v: yaml.safe_dump(v, default_flow_style=True).strip()[:5000]
                       if not isinstance(v, list) or len(str(v)) < 5000 else "[]"),
            st.text(max_size=40),
            st.sampled_from(["[1,", "{a: 1", "&a 1", "*a", "!!binary aGk=", "!!python/name:os.system", ".nan",
                             "1e999", "0x10", "0o7", "1_000", "~", "'unterminated", "- a\n- b", "a: b: c"]),
        ))
        items.append(f"{path}={value}")
    return name, items


@pytest.fixture(scope="module")
def base_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bases")
    out = {}
    for name, raw in BASES.items():
        out[name] = folder / f"{name}.yaml"
        out[name].write_text(yaml.safe_dump(raw, sort_keys=False))
    return out


@pytest.mark.slow
@settings(FUZZ, max_examples=EXAMPLES["overrides"])
@given(case=overrides())
def test_fuzz_set_overrides(base_files, case):
    name, items = case
    OUTCOMES["--set override lists"] += 1
    OUTCOMES["--set overrides"] += len(items)
    check(lambda: load_recipe(base_files[name], overrides=items), "--set override lists")


# ------------------------------------------------------------------------------------------------ the CLI
@pytest.mark.slow
@settings(FUZZ, max_examples=EXAMPLES["cli"])
@given(case=overrides())
def test_fuzz_through_the_cli(base_files, case):
    name, items = case
    OUTCOMES["CLI validate runs"] += 1
    args = ["validate", str(base_files[name])]
    for item in items:
        if "\x00" in item:  # an argv string cannot hold NUL; the shell cannot pass one
            item = item.replace("\x00", "")
        args += ["--set", item]
    result = invoke(*args)
    assert result.exit_code in (0, 2), (result.exit_code, result.exception, result.stderr[-2000:])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.stdout + result.stderr
    if result.exit_code == 2:
        assert result.stderr.startswith("error: ") and len(result.stderr) < 20_000
    OUTCOMES[f"CLI exit {result.exit_code}"] += 1


@pytest.mark.slow
def test_fuzz_counts():
    """The totals of this module's run (printed with -s): at least 1,000 generated recipes and overrides."""
    if not OUTCOMES:
        pytest.skip("the fuzz tests did not run in this session")
    print("\nrecipe fuzzing:", dict(sorted(OUTCOMES.items())))
    generated = (OUTCOMES["dict recipes"] + OUTCOMES["plausible recipes"] + OUTCOMES["recipe files"]
                 + OUTCOMES["--set override lists"])
    assert generated >= 1000
    built = sum(n for k, n in OUTCOMES.items() if k.endswith("validated and built"))
    refused = sum(n for k, n in OUTCOMES.items() if k.endswith("refused with a YAML path"))
    assert built > 150 and refused > 500
