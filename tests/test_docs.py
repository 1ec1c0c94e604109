"""Keep docs/recipes.md true to the code.

* Every field of the top level, of each engine section (``optim``, ``train``, ``probe``) and of each built-in
  plugin's ``Config`` has a row in the table under its heading, with the real default and every allowed choice;
  no row or heading documents a field or plugin that no longer exists.
* The validation example prints exactly what :func:`load_recipe` reports for it today.
* Every recipe in ``recipes/`` validates and is listed on the page.

Built-in plugins are found through the registry (entry points of the ``jepaflow`` distribution), so a new plugin
fails this test until it is documented. Conventions read from the page: engine sections are headed
``### `optim```, plugins ``### <recipe section> `<plugin name>```, and table rows are
``| `field` | type | `default` | meaning | source |`` with the default written as YAML (or ``required``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import pytest
import torch
import yaml
from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from jepaflow.config import PLUGIN_SECTIONS, RecipeModel, load_recipe
from jepaflow.engine.build import build_masker, build_objective
from jepaflow.errors import RecipeError
from jepaflow.registry import default_registry

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "recipes.md"
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
SECTION_OF_KIND = {kind: section for section, kind in PLUGIN_SECTIONS.items()}
TOP_LEVEL = "top level"
REQUIRED = object()

# Engine sections are RecipeModel's model-typed fields; the top level is the rest that is not a plugin section.
ENGINE_MODELS: dict[str, type[BaseModel]] = {
    name: f.annotation
    for name, f in RecipeModel.model_fields.items()
    if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel)
}
TOP_LEVEL_FIELDS = [n for n in RecipeModel.model_fields if n not in ENGINE_MODELS and n not in PLUGIN_SECTIONS]

# Discovery reads entry-point metadata only (no import), so parametrizing at collection time is cheap.
BUILTIN_IDS = sorted(
    (info.kind, info.name) for info in default_registry().infos() if info.package == "jepaflow"
)

_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*$")
_ENGINE_HEADING = re.compile(r"`(\w+)`")
_PLUGIN_HEADING = re.compile(r"(\w+) `([\w.-]+)`")
_FIELD_CELL = re.compile(r"`(\w+)`")
_UNESCAPED_PIPE = re.compile(r"(?<!\\)\|")


# ------------------------------------------------------------------------------------------------ page parsing
def parse_tables(text: str) -> tuple[dict[str, dict[str, list[str]]], list[str]]:
    """``({heading key: {field: row cells}}, duplicated keys)`` for the level-1..3 headings of the page.

    Heading keys: ``"top level"``, ``"optim"`` (from ``### `optim```), ``"encoder vit"`` (from
    ``### encoder `vit```). A table row belongs to the last such heading above it; fenced code is skipped.
    """
    tables: dict[str, dict[str, list[str]]] = {}
    duplicates: list[str] = []
    current: str | None = None
    in_fence = False
    for line in text.splitlines():
        if line.startswith("```"):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        heading = _HEADING.match(line)
        if heading is not None:
            if len(heading[1]) <= 3:
                current = heading_key(heading[2])
                if current is not None:
                    if current in tables:
                        duplicates.append(current)
                    tables.setdefault(current, {})
            continue
        if current is not None and line.startswith("|"):
            cells = [c.strip().replace("\\|", "|") for c in _UNESCAPED_PIPE.split(line.strip()[1:-1])]
            field = _FIELD_CELL.fullmatch(cells[0])
            if field is not None and len(cells) >= 4:
                tables[current][field[1]] = cells
    return tables, duplicates


def heading_key(title: str) -> str | None:
    if title == TOP_LEVEL:
        return TOP_LEVEL
    if (m := _ENGINE_HEADING.fullmatch(title)) is not None:
        return m[1]
    if (m := _PLUGIN_HEADING.fullmatch(title)) is not None and m[1] in PLUGIN_SECTIONS:
        return f"{m[1]} {m[2]}"
    return None


@pytest.fixture(scope="module")
def doc_text() -> str:
    return DOC.read_text()


@pytest.fixture(scope="module")
def doc_tables(doc_text: str) -> dict[str, dict[str, list[str]]]:
    tables, duplicates = parse_tables(doc_text)
    assert not duplicates, f"{DOC.name}: headings documented twice: {duplicates}"
    return tables


@pytest.fixture(scope="module")
def builtin_plugins() -> dict[tuple[str, str], Any]:
    """``{(kind, name): PluginInfo}`` of jepaflow's own plugins, imported."""
    return {(i.kind, i.name): i for i in default_registry().infos(load=True) if i.package == "jepaflow"}


# ------------------------------------------------------------------------------------------------ comparisons
def default_of(finfo: Any) -> Any:
    """A field's default in its YAML/JSON form (tuples as lists), or REQUIRED."""
    if finfo.is_required():
        return REQUIRED
    try:
        value = finfo.get_default(call_default_factory=True)
    except TypeError:  # pydantic < 2.10: no call_default_factory
        value = finfo.get_default()
        if value is None and finfo.default_factory is not None:
            value = finfo.default_factory()
    return to_jsonable_python(value)


def documented_default(cell: str) -> Any:
    if cell == "required":
        return REQUIRED
    m = re.fullmatch(r"`(.*)`", cell)
    assert m is not None, f"default cell {cell!r} is neither `yaml value` nor required"
    return yaml.safe_load(m[1])


def same_value(a: Any, b: Any) -> bool:
    """Equality that does not let ``true == 1`` or ``"1" == 1`` through."""
    if a is REQUIRED or b is REQUIRED:
        return a is b
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def literal_choices(annotation: Any) -> list[str]:
    """Every ``Literal`` value anywhere in a type annotation, as strings."""
    if get_origin(annotation) is Literal:
        return [str(v) for v in get_args(annotation)]
    return [c for arg in get_args(annotation) for c in literal_choices(arg)]


def table_problems(where: str, rows: dict[str, list[str]] | None, fields: dict[str, Any],
                   extra_allowed: frozenset[str] = frozenset()) -> list[str]:
    """What is missing, wrong or stale in the doc table ``rows`` for the pydantic ``fields``."""
    if rows is None:
        return [f"no heading for {where}"]
    problems = []
    for name, finfo in fields.items():
        row = rows.get(name)
        if row is None:
            problems.append(f"{where}: field `{name}` has no row")
            continue
        actual, written = default_of(finfo), documented_default(row[2])
        if not same_value(actual, written):
            shown = "required" if actual is REQUIRED else repr(actual)
            problems.append(f"{where}.{name}: documented default {row[2]} reads as {written!r} (YAML), but the "
                            f"code's is {shown}")
        missing = [c for c in literal_choices(finfo.annotation) if f'"{c}"' not in row[1]]
        if missing:
            problems.append(f"{where}.{name}: type cell {row[1]!r} lacks the choices {missing}")
    stale = sorted(set(rows) - set(fields) - extra_allowed)
    if stale:
        problems.append(f"{where}: rows for fields that do not exist: {stale}")
    return problems


# ------------------------------------------------------------------------------------------------ tests
def test_page_documents_the_top_level_and_every_engine_section(doc_tables):
    assert set(ENGINE_MODELS) >= {"optim", "train", "probe"}
    assert set(TOP_LEVEL_FIELDS) >= {"seed", "output_dir"}
    top = {n: RecipeModel.model_fields[n] for n in TOP_LEVEL_FIELDS}
    problems = table_problems(TOP_LEVEL, doc_tables.get(TOP_LEVEL), top)
    for section, model in ENGINE_MODELS.items():
        problems += table_problems(f"`{section}`", doc_tables.get(section), model.model_fields)
    assert not problems, f"update {DOC.relative_to(ROOT)}:\n  " + "\n  ".join(problems)


def test_there_are_builtin_plugins_of_every_kind():
    # Guards the parametrization below: an uninstalled package would silently document nothing.
    assert {kind for kind, _ in BUILTIN_IDS} == set(SECTION_OF_KIND), BUILTIN_IDS


@pytest.mark.parametrize(("kind", "name"), BUILTIN_IDS, ids=[f"{k}:{n}" for k, n in BUILTIN_IDS])
def test_page_documents_every_field_of_builtin_plugin(kind, name, doc_tables, builtin_plugins):
    info = builtin_plugins[(kind, name)]
    assert info.error is None, f"built-in {kind} {name!r} failed to import: {info.error}"
    section = SECTION_OF_KIND[kind]
    key = f"{section} {name}"
    problems = table_problems(f"### {section} `{name}`", doc_tables.get(key), info.loaded.Config.model_fields,
                              extra_allowed=frozenset({"name"}))
    assert not problems, f"update {DOC.relative_to(ROOT)}:\n  " + "\n  ".join(problems)


def test_page_documents_no_plugin_that_is_not_built_in(doc_tables):
    documented = {key for key in doc_tables if key != TOP_LEVEL and key not in ENGINE_MODELS}
    known = {f"{SECTION_OF_KIND[kind]} {name}" for kind, name in BUILTIN_IDS}
    assert documented <= known, f"{DOC.name} documents plugins that are not built in: {sorted(documented - known)}"


def test_validation_example_prints_what_load_recipe_reports(doc_text, tmp_path, monkeypatch):
    # The page shows a broken recipe (a ```yaml block starting "# broken.yaml") and the error it gives.
    blocks = re.findall(r"```(\w*)\n(.*?)```", doc_text, flags=re.S)
    recipe_text = next(body for lang, body in blocks if lang == "yaml" and body.startswith("# broken.yaml\n"))
    console = next(body for lang, body in blocks if "RecipeError: " in body)
    shown = console.split("jepaflow.errors.RecipeError: ", 1)[1].rstrip("\n").splitlines()

    (tmp_path / "broken.yaml").write_text(recipe_text)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RecipeError) as exc_info:
        load_recipe("broken.yaml")
    assert str(exc_info.value).splitlines() == shown, "refresh the validation example in docs/recipes.md"
    assert len(exc_info.value.issues) == 6

    # The page says the cross-section batch check appears once the engine sections are valid.
    with pytest.raises(RecipeError) as exc_info:
        load_recipe("broken.yaml", overrides=["optim.lr=1.0e-3", "train.precision=bf16"])
    issues = exc_info.value.issues
    assert ("train.batch_size", "must be a multiple of optim.accum_steps (3)") in issues
    assert not any(path in ("optim.lr", "train.precision") for path, _ in issues)


def test_recipe_examples_on_the_page_validate_and_build(doc_text):
    # Complete examples (```yaml blocks with an objective), except the deliberately broken one.
    examples = [body for lang, body in re.findall(r"```(\w*)\n(.*?)```", doc_text, flags=re.S)
                if lang == "yaml" and "\nobjective:" in body and not body.startswith("# broken.yaml")]
    assert examples, "the page lost its recipe example"
    for body in examples:
        recipe = load_recipe(yaml.safe_load(body))
        with torch.device("meta"):  # sizes and head counts are checked at build time; meta costs nothing
            objective = build_objective(recipe)
        assert sum(p.numel() for p in objective.parameters()) > 0
        masker = build_masker(recipe)
        if masker is not None:
            grid = objective.representation_encoder().grid_size
            masks = masker(2, grid, torch.Generator().manual_seed(0))
            assert masks.context.shape[0] == 2


def test_recipes_exist():
    assert RECIPES, "recipes/ holds no recipe"


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_recipe_validates_and_is_listed(path, doc_text):
    recipe = load_recipe(path)
    assert recipe.source == str(path)
    assert {"data", "objective"} <= set(recipe.components)
    assert f"`recipes/{path.name}`" in doc_text, f"list recipes/{path.name} under 'Shipped recipes' in {DOC.name}"
