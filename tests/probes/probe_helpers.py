"""Synthetic features and tiny encoders/data sets shared by the probe tests."""

from __future__ import annotations

import torch
from torch import Tensor

from jepaflow.interfaces import Encoder, PluginConfig


def gaussian_blobs(n_per_class: int, num_classes: int, dim: int, spread: float, seed: int) -> tuple[Tensor, Tensor]:
    """Class ``c`` ~ N(mu_c, I), ``mu_c`` random of norm ``spread`` (the same for every ``seed``: train and test
    share them); ``seed`` draws the samples. Returns (feats (N, D), labels (N,))."""
    means = torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(1234))
    means = means / means.norm(dim=1, keepdim=True) * spread
    labels = torch.arange(num_classes).repeat_interleave(n_per_class)
    feats = means[labels] + torch.randn(len(labels), dim, generator=torch.Generator().manual_seed(seed))
    return feats, labels


class CountingEncoder(Encoder):
    """A toy patch encoder: 4x4 patches -> linear -> ReLU, tokens ``(B, N, D)``; counts its forward calls and
    records the train/eval mode of each; ``forward_layers`` returns ``layers`` scaled copies of the tokens."""

    Config = PluginConfig
    capabilities = frozenset({"intermediate_layers"})

    def __init__(self, channels: int = 3, dim: int = 16, seed: int = 0, num_heads: int = 2):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.proj = torch.nn.Conv2d(channels, dim, kernel_size=4, stride=4)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(self.proj.weight.shape, generator=g) * 0.2)
            self.proj.bias.zero_()
        self.embed_dim, self.in_chans, self.patch_size, self.num_heads = dim, channels, 4, num_heads
        self.grid_size = (2, 2)
        self.calls = 0
        self.modes: list[bool] = []

    def forward(self, images, keep=None, keep_valid=None):
        self.calls += 1
        self.modes.append(self.training)
        return torch.relu(self.proj(images)).flatten(2).transpose(1, 2)

    def forward_layers(self, images, layers):
        self.calls += 1
        x = torch.relu(self.proj(images)).flatten(2).transpose(1, 2)
        return [x * (i + 1) for i in range(layers)]


class TensorDataset(torch.utils.data.Dataset):
    """Images and labels held in tensors; ``num_classes`` as the Dataset interface has it."""

    def __init__(self, images: Tensor, labels: Tensor, num_classes: int | None):
        self.images, self.labels, self.num_classes = images, labels, num_classes

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], int(self.labels[i])
