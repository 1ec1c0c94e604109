"""Predictor plugins: context tokens -> predictions at target positions. Base: jepaflow.interfaces.Predictor."""
