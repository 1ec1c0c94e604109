"""From a validated :class:`~jepaflow.config.Recipe` to objects. The only place plugins are instantiated.

Each constructor receives its own typed config plus the documented context of its kind
(see :mod:`jepaflow.interfaces`), never the recipe. A constructor that rejects its arguments (e.g. a width that
the inherited number of heads does not divide) is reported as a user error naming the recipe section.
"""

from __future__ import annotations

from typing import Any

from jepaflow.config import Recipe
from jepaflow.errors import JepaflowError, PluginError, clip
from jepaflow.interfaces import Dataset, Encoder, Masker, Objective, TargetUpdater, ViewSampler


def _construct(recipe: Recipe, section: str, **context: Any) -> Any:
    comp = recipe.components[section]
    try:
        return comp.cls(comp.config, **context)
    except JepaflowError:
        raise
    except (ValueError, TypeError) as exc:
        raise JepaflowError(
            f"{section} plugin {comp.name!r} could not be built: {clip(str(exc), 500)}",
            f"adjust the {section} section of the recipe (`jepaflow plugins show {comp.name}` lists its fields)",
        ) from None
    except Exception as exc:  # any other failure of a plugin's constructor: name the plugin and its package
        module = getattr(comp.cls, "__module__", "?")
        raise PluginError(
            f"{section} plugin {comp.name!r} ({comp.cls.__name__} in {module}) failed while being built: "
            f"{type(exc).__name__}: {clip(str(exc), 500)}",
            f"check the {section} section of the recipe; if it is right, the plugin has a bug: report it to its "
            "package's authors",
        ) from None


def build_encoder(recipe: Recipe) -> Encoder:
    return _construct(recipe, "encoder")


def build_objective(recipe: Recipe) -> Objective:
    """The objective with the module components it declared in ``requires``."""
    requires = recipe.components["objective"].cls.requires
    modules: dict[str, Any] = {}
    if "encoder" in requires:
        modules["encoder"] = build_encoder(recipe)
    if "predictor" in requires:
        modules["predictor"] = _construct(recipe, "predictor", encoder=modules["encoder"])
    if "projector" in requires:
        modules["projector"] = _construct(recipe, "projector", in_dim=modules["encoder"].embed_dim)
    if "prediction_head" in requires:
        in_dim = modules["projector"].out_dim if "projector" in modules else modules["encoder"].embed_dim
        modules["prediction_head"] = _construct(recipe, "prediction_head", in_dim=in_dim)
    return _construct(recipe, "objective", **modules)


def build_masker(recipe: Recipe) -> Masker | None:
    return _construct(recipe, "masker") if "masker" in recipe.components else None


def build_target_updater(recipe: Recipe) -> TargetUpdater | None:
    return _construct(recipe, "target_updater") if "target_updater" in recipe.components else None


def build_views(recipe: Recipe) -> ViewSampler | None:
    if "views" not in recipe.components:
        return None
    data = recipe.components["data"].config
    return _construct(recipe, "views", image_size=data.image_size, channels=data.channels,
                      mean=tuple(data.mean), std=tuple(data.std))


def build_dataset(recipe: Recipe, split: str, augment: bool) -> Dataset:
    """The data set; for pretraining (``augment``) with a view sampler, the sampler is its transform."""
    views = build_views(recipe) if augment else None
    if views is not None:
        return _construct(recipe, "data", split=split, augment=augment, transform=views)
    return _construct(recipe, "data", split=split, augment=augment)
