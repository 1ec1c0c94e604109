"""Frozen-feature probes (kNN, linear) over any Encoder."""
