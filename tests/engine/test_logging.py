"""Run-folder records: the plugins of a run, each with the package and version that provided it."""

from __future__ import annotations

import jepaflow
from jepaflow.config import Component, load_recipe
from jepaflow.engine.logging import plugin_provenance
from jepaflow.maskers.random import RandomMasker


def test_plugin_provenance_names_every_section_with_its_package(tiny_recipe):
    recipe = load_recipe(tiny_recipe())
    prov = plugin_provenance(recipe)
    assert set(prov) == set(recipe.components) == {"data", "encoder", "predictor", "masker", "target_updater",
                                                   "objective"}
    assert prov["masker"] == {
        "kind": "masker", "name": "multiblock", "class": "jepaflow.maskers.multiblock:MultiBlockMasker",
        "package": "jepaflow", "version": jepaflow.__version__,
        "entry_point": "jepaflow.maskers.multiblock:MultiBlockMasker",
    }
    # a class swapped in by code (not what the entry point names) is recorded as the class actually used
    comp = recipe.components["masker"]
    recipe.components["masker"] = Component(comp.kind, comp.name, RandomMasker, comp.config)
    assert plugin_provenance(recipe)["masker"]["class"] == "jepaflow.maskers.random:RandomMasker"
