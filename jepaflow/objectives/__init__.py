"""Objective plugins: one self-supervised method each. Base: jepaflow.interfaces.Objective."""
