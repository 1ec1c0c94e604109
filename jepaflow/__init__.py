"""jepaflow: modular self-supervised learning for images, with I-JEPA as the reference recipe.

``import jepaflow`` is cheap: no plugin and no heavy module is imported until asked for.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "load_encoder", "load_recipe"]


def __getattr__(name: str) -> Any:
    # Lazy attributes keep `import jepaflow` (and so `jepaflow --help`) fast.
    if name == "load_encoder":
        from jepaflow.hub import load_encoder

        return load_encoder
    if name == "load_recipe":
        from jepaflow.config import load_recipe

        return load_recipe
    raise AttributeError(f"module 'jepaflow' has no attribute {name!r}")
