"""Masker plugins: (batch size, patch grid) -> context and target indices. Base: jepaflow.interfaces.Masker."""
