"""Encoder plugins: images (B, C, H, W) -> patch tokens (B, N, D). Base class: jepaflow.interfaces.Encoder."""
