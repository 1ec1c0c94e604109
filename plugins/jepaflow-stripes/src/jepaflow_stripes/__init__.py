"""jepaflow-stripes: a third-party masker plugin for jepaflow (entry point ``jepaflow.maskers: stripes``).

The package only defines the class; jepaflow finds it through the entry point declared in ``pyproject.toml``
and imports it when a recipe (or ``jepaflow plugins list``) asks for it.
"""

from jepaflow_stripes.masker import StripeMasker, StripeMaskerConfig

__version__ = "0.1.0"
__all__ = ["StripeMasker", "StripeMaskerConfig", "__version__"]
