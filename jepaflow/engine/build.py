"""From a validated :class:`~jepaflow.config.Recipe` to objects. The only place plugins are instantiated.

Each constructor receives its own typed config plus the documented context of its kind
(see :mod:`jepaflow.interfaces`), never the recipe.
"""

from __future__ import annotations

from jepaflow.config import Recipe
from jepaflow.interfaces import Dataset, Encoder, Masker, Objective, Predictor, TargetUpdater


def build_encoder(recipe: Recipe) -> Encoder:
    comp = recipe.components["encoder"]
    return comp.cls(comp.config)


def build_objective(recipe: Recipe) -> Objective:
    """The objective with the module components it declared in ``requires``."""
    comp = recipe.components["objective"]
    modules: dict[str, Encoder | Predictor] = {}
    if "encoder" in comp.cls.requires:
        modules["encoder"] = build_encoder(recipe)
    if "predictor" in comp.cls.requires:
        pred = recipe.components["predictor"]
        modules["predictor"] = pred.cls(pred.config, encoder=modules["encoder"])
    return comp.cls(comp.config, **modules)


def build_masker(recipe: Recipe) -> Masker | None:
    comp = recipe.components.get("masker")
    return None if comp is None else comp.cls(comp.config)


def build_target_updater(recipe: Recipe) -> TargetUpdater | None:
    comp = recipe.components.get("target_updater")
    return None if comp is None else comp.cls(comp.config)


def build_dataset(recipe: Recipe, split: str, augment: bool) -> Dataset:
    comp = recipe.components["data"]
    return comp.cls(comp.config, split=split, augment=augment)
