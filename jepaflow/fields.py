"""Shared ranges of config fields, as annotated types: ``embed_dim: Width = Field(384, description=...)``.

Every number field of a recipe has an upper bound, far beyond any published setting and far below what overflows
or cannot be built, so that a value that validates also builds. The base model (:mod:`jepaflow.strict`) already
refuses non-finite floats, booleans for numbers and integers beyond 64 bits; these types add the ranges that
several plugins share, and :data:`FiniteFloat` gives finiteness to a model that does not derive from it.

This module imports pydantic only: plugins, the engine and the CLI all import it cheaply.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AllowInfNan, Field

#: a float that is neither infinite nor NaN
FiniteFloat = Annotated[float, AllowInfNan(False)]

# Shared ranges. Each is far beyond any published setting and far below what overflows or cannot be built;
# plugins use them as field types, e.g. ``embed_dim: Width = Field(384, description=...)``.
MAX_IMAGE_SIZE = 8192  # pixels per side
MAX_WIDTH = 16384  # channels of a transformer (ViT-22B: 6144)
MAX_BLOCKS = 256  # transformer blocks (ViT-22B: 48)

#: side of an image in pixels
ImageSize = Annotated[int, Field(ge=1, le=MAX_IMAGE_SIZE)]
#: width (channels) of a layer
Width = Annotated[int, Field(ge=1, le=MAX_WIDTH)]
#: number of transformer blocks
Blocks = Annotated[int, Field(ge=1, le=MAX_BLOCKS)]
#: attention heads
Heads = Annotated[int, Field(ge=1, le=1024)]
#: MLP hidden width / model width
MlpRatio = Annotated[float, Field(gt=0, le=64)]
#: standard deviation of a weight initialization
InitStd = Annotated[float, Field(gt=0, le=1)]
#: a probability, or any fraction of a whole
Fraction = Annotated[float, Field(ge=0, le=1)]
#: a drop rate (stochastic depth): 1 would drop everything
DropRate = Annotated[float, Field(ge=0, lt=1)]
#: a small constant added for numerical stability
Epsilon = Annotated[float, Field(gt=0, le=1)]
#: a softmax temperature (below 1e-3, exp(1/T) overflows float32)
Temperature = Annotated[float, Field(ge=1e-3, le=100)]
#: a weight of a loss term
LossWeight = Annotated[float, Field(ge=0, le=1e4)]
#: a count of things (views, targets, crops, slices)
Count = Annotated[int, Field(ge=1, le=65536)]


__all__ = [
    "Blocks",
    "Count",
    "DropRate",
    "Epsilon",
    "FiniteFloat",
    "Fraction",
    "Heads",
    "ImageSize",
    "InitStd",
    "LossWeight",
    "MAX_BLOCKS",
    "MAX_IMAGE_SIZE",
    "MAX_WIDTH",
    "MlpRatio",
    "Temperature",
    "Width",
]
