"""The labelled images a probe reads: a recipe's ``data`` section, built for evaluation.

Both splits use the data set's deterministic evaluation transform (``augment=False``: resize, centre crop,
normalize), never a view sampler. The end-of-run probe and ``jepaflow probe`` both come through here with the
resolved section (``{"name": ..., every field of the plugin's Config}``), which is also what the feature cache
and ``probe.json`` record.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from jepaflow.errors import DataError, JepaflowError, RecipeError
from jepaflow.registry import Registry, default_registry


@dataclass
class ProbeData:
    """Both splits of a labelled data set and the resolved section they came from."""

    section: dict[str, Any]
    train: Any
    test: Any
    num_classes: int | None  # None: the data set has no labels


def resolve_data_section(section: dict[str, Any], registry: Registry | None = None, where: str = "data") -> dict[str, Any]:
    """Validate a data section against its plugin's Config; return it resolved (defaults filled in, JSON types).
    Problems are one :class:`RecipeError` with YAML paths under ``where``."""
    from jepaflow.config import _pydantic_issues

    registry = registry or default_registry()
    if not isinstance(section, dict):
        raise RecipeError([(where, "a data section is a mapping with a name: and the data set's fields")])
    name = section.get("name")
    if not isinstance(name, str):
        known = ", ".join(registry.names("dataset"))
        raise RecipeError([(f"{where}.name", f"missing: name the data set plugin to use ({known})")])
    cls = registry.get("dataset", name)
    try:
        config = cls.Config.model_validate({k: v for k, v in section.items() if k != "name"})
    except ValidationError as exc:
        raise RecipeError(_pydantic_issues(exc, prefix=where)) from None
    return {"name": name, **config.model_dump(mode="json")}


def read_data_spec(spec: str) -> dict[str, Any]:
    """``--data``: a recipe file (its ``data`` section is used), a YAML file holding a data section, or an inline
    YAML mapping such as ``"{name: fashion_mnist, limit: 1000}"``. Returns the section, unvalidated."""
    path = Path(spec).expanduser()
    if path.is_file():
        from jepaflow.config import read_yaml

        raw = read_yaml(path)
        if isinstance(raw.get("data"), dict):
            return dict(raw["data"])
        if "name" in raw:
            return raw
        raise JepaflowError(f"{spec} has neither a data: section nor a name: field",
                            "pass a recipe, or a YAML file holding one data section (name: fashion_mnist, ...)")
    try:
        raw = yaml.safe_load(spec)
    except yaml.YAMLError:
        raw = None
    if isinstance(raw, dict) and "name" in raw:
        return raw
    raise JepaflowError(f"--data {spec!r} is not a file, nor an inline data section",
                        "pass a recipe file, a data-section YAML file, or e.g. --data '{name: fashion_mnist}'")


def build_probe_data(section: dict[str, Any], registry: Registry | None = None,
                     require_labels: bool = True) -> ProbeData:
    """Both splits of a resolved data section, with the evaluation transform; a data set without labels is a
    :class:`DataError` (with ``require_labels``) or has ``num_classes`` None."""
    registry = registry or default_registry()
    cls = registry.get("dataset", section["name"])
    config = cls.Config.model_validate({k: v for k, v in section.items() if k != "name"})
    try:
        train = cls(config, split="train", augment=False)
        test = cls(config, split="test", augment=False)
    except (ValueError, TypeError) as exc:
        raise JepaflowError(f"data plugin {section['name']!r} could not be built: {exc}",
                            "adjust the data section") from exc
    num_classes = getattr(train, "num_classes", None)
    if num_classes is None and require_labels:
        raise DataError(
            f"the probes need labels, but data set {section['name']!r} has none (num_classes is None)",
            "probe on a labelled data set (--data), or set probe.enabled: false",
        )
    return ProbeData(section, train, test, None if num_classes is None else int(num_classes))


__all__ = ["ProbeData", "build_probe_data", "read_data_spec", "resolve_data_section"]
