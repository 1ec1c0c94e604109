"""Small stand-ins shared by tests."""

from __future__ import annotations

import torch


class TinyEncoder(torch.nn.Module):
    """Flatten + Linear as a one-token encoder of ``(B, 2, 4, 4)`` images (enough to check an objective's wiring):
    ``(B, 2, 4, 4) -> (B, 1, 6)``."""

    embed_dim = 6

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(2 * 4 * 4, 6)

    def forward(self, images, keep=None, keep_valid=None):
        return self.lin(images.flatten(1)).unsqueeze(1)  # (B, 1, D)

    def pool(self, tokens):
        return tokens.mean(1)
