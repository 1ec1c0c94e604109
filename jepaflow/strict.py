"""The base of every config model (engine sections and plugin configs): strict values, no unknown fields.

A recipe value must already have the type of its field; nothing is coerced. ``cell: true`` for an int field,
``epochs: "2"`` or ``device: 1`` are errors with their YAML path, not silently ``1``, ``2`` and ``"1"``. The
conversions that lose nothing are kept, because YAML cannot write them otherwise:

* an int where a float is expected (``lr: 1`` is 1.0);
* a YAML list where a tuple is expected (``target_scale: [0.15, 0.2]``; YAML has no tuples).

Numbers are also finite (``.inf``/``.nan`` are refused in every float field, tuples and lists included:
``allow_inf_nan=False``), and integers fit in 64 bits (``seed: 2**70`` would otherwise crash ``torch.manual_seed``
at run time). Ranges are each field's own; the shared ones are annotated types in :mod:`jepaflow.fields`.

Numbers in scientific notation without a dot (``1e-3``) are numbers: recipes and ``--set`` values are read with
YAML 1.2's float syntax (``jepaflow.config.load_yaml_text``), where PyYAML's YAML 1.1 default would read a string.
"""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _accepts_tuple(annotation: Any) -> bool:
    """Whether a field's annotation is a tuple type, or a union with one (``tuple[float, float] | None``)."""
    origin = typing.get_origin(annotation)
    if origin is tuple or annotation is tuple:
        return True
    if origin is typing.Union or origin is types.UnionType:
        return any(_accepts_tuple(a) for a in typing.get_args(annotation))
    return False


class StrictModel(BaseModel):
    """Strict, frozen, ``extra="forbid"``; YAML lists become tuples for tuple fields (see the module docstring)."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _yaml_lists_to_tuples(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        converted = None
        for name, field in cls.model_fields.items():
            key = field.alias or name
            value = data.get(key)
            if isinstance(value, list) and _accepts_tuple(field.annotation):
                converted = converted if converted is not None else dict(data)
                converted[key] = tuple(value)
        return converted if converted is not None else data

    @field_validator("*", mode="before")
    @classmethod
    def _ints_fit_in_64_bits(cls, value: Any) -> Any:
        items = value if isinstance(value, (list, tuple)) and len(value) <= 10_000 else [value]
        for item in items:
            if isinstance(item, int) and not isinstance(item, bool) and not INT64_MIN <= item <= INT64_MAX:
                raise ValueError("the number does not fit in 64 bits")
        return value


__all__ = ["INT64_MAX", "INT64_MIN", "StrictModel"]
