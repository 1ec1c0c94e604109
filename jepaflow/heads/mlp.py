"""An MLP on pooled features: the projector / expander / prediction head of invariance methods.

One layout covers the published heads (``in_dim -> hidden_dims... -> out_dim``, each hidden layer
``Linear -> BatchNorm1d -> ReLU``, the last one a plain ``Linear``):

* SimCLR (Chen et al., ICML 2020, sec. 2.1 and B.9; google-research/simclr ``model_util.py:projection_head``):
  ``hidden_dims=[2048], out_dim=128`` (v2 adds hidden layers and a BatchNorm on the output, ``last_batch_norm``).
* BYOL (Grill et al., NeurIPS 2020, sec. 3.3; deepmind-research ``byol/utils/networks.py:MLP``): projector and
  predictor ``hidden_dims=[4096], out_dim=256`` with BatchNorm.
* VICReg (Bardes et al., ICLR 2022, sec. 4.1; facebookresearch/vicreg ``main_vicreg.py:Projector``): the
  expander ``hidden_dims=[8192, 8192], out_dim=8192``, last Linear without bias (``last_bias=False``).
"""

from __future__ import annotations

from pydantic import Field, field_validator
from torch import Tensor, nn

from jepaflow.fields import Width
from jepaflow.interfaces import Head, PluginConfig


def mlp_layers(
    in_dim: int,
    hidden_dims: list[int],
    out_dim: int,
    *,
    batch_norm: bool = True,
    last_batch_norm: bool = False,
    last_bias: bool = True,
) -> list[nn.Module]:
    """The modules of the MLP, in order.

    Every hidden layer is ``Linear(bias=True) [-> BatchNorm1d] -> ReLU`` (the hidden Linear keeps its bias, as the
    reference heads do, though a following BatchNorm makes it redundant); the output layer is
    ``Linear(bias=last_bias) [-> BatchNorm1d(affine=False)]``.
    """
    layers: list[nn.Module] = []
    width = in_dim
    for hidden in hidden_dims:
        layers.append(nn.Linear(width, hidden))
        if batch_norm:
            layers.append(nn.BatchNorm1d(hidden))
        layers.append(nn.ReLU(inplace=True))
        width = hidden
    layers.append(nn.Linear(width, out_dim, bias=last_bias))
    if last_batch_norm:
        # Normalizes the output without learned scale/shift (SimCLR v2's projector output, DINO-style heads).
        layers.append(nn.BatchNorm1d(out_dim, affine=False))
    return layers


class MLPHead(Head):
    """An MLP head ``(B, in_dim) -> (B, out_dim)``: hidden layers Linear -> BatchNorm1d -> ReLU, then a Linear.

    Defaults are SimCLR's projector (2048 -> 128); BYOL's projector/predictor is ``hidden_dims=[4096],
    out_dim=256``; VICReg's expander ``hidden_dims=[8192, 8192], out_dim=8192, last_bias=False``.
    Constructed as ``MLPHead(config, in_dim=...)``. The layers are ``self.net`` (an ``nn.Sequential``).
    """

    class Config(PluginConfig):
        hidden_dims: list[Width] = Field(
            default_factory=lambda: [2048], max_length=64,
            description="widths of the hidden layers, in order ([] for a single Linear); SimCLR [2048], "
            "BYOL [4096], VICReg [8192, 8192]",
        )
        out_dim: Width = Field(128, description="output width (SimCLR 128, BYOL 256, VICReg 8192)")
        batch_norm: bool = Field(
            True, description="BatchNorm1d after each hidden Linear, before the ReLU (SimCLR, BYOL, VICReg)"
        )
        last_batch_norm: bool = Field(
            False, description="BatchNorm1d(affine=False) after the last Linear (SimCLR v2's projector output)"
        )
        last_bias: bool = Field(True, description="bias in the last Linear (VICReg's expander has none)")

        @field_validator("hidden_dims")
        @classmethod
        def _positive(cls, dims: list[int]) -> list[int]:
            if any(h < 1 for h in dims):
                raise ValueError(f"hidden_dims must be positive widths (got {dims})")
            return dims

    def __init__(self, config: Config | None = None, *, in_dim: int):
        super().__init__()
        config = config if config is not None else self.Config()
        self.config = config
        self.in_dim = int(in_dim)
        self.out_dim = config.out_dim
        self.net = nn.Sequential(
            *mlp_layers(
                self.in_dim,
                list(config.hidden_dims),
                config.out_dim,
                batch_norm=config.batch_norm,
                last_batch_norm=config.last_batch_norm,
                last_bias=config.last_bias,
            )
        )

    def forward(self, x: Tensor) -> Tensor:
        """``(B, in_dim) -> (B, out_dim)``. With BatchNorm in training mode, B must be > 1."""
        return self.net(x)

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, hidden_dims={list(self.config.hidden_dims)}, out_dim={self.out_dim}"


__all__ = ["MLPHead", "mlp_layers"]
