"""MLPHead: the projector / expander / predictor MLP of the invariance baselines."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from jepaflow.heads.mlp import MLPHead
from jepaflow.registry import get_plugin


def layer_types(head: MLPHead) -> list[type]:
    return [type(m) for m in head.net]


def test_default_is_simclr_projector():
    head = MLPHead(MLPHead.Config(), in_dim=2048)
    assert head.out_dim == 128
    assert layer_types(head) == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert (head.net[0].in_features, head.net[0].out_features) == (2048, 2048)
    assert (head.net[3].in_features, head.net[3].out_features) == (2048, 128)
    assert head.net[3].bias is not None


def test_shapes_and_bn_placement_for_vicreg_expander():
    cfg = MLPHead.Config(hidden_dims=[16, 12], out_dim=8, last_bias=False)
    head = MLPHead(cfg, in_dim=5)
    assert layer_types(head) == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert head.net[-1].bias is None
    assert [m.num_features for m in head.net if isinstance(m, nn.BatchNorm1d)] == [16, 12]
    out = head(torch.randn(4, 5))
    assert out.shape == (4, 8)


def test_last_batch_norm_normalizes_the_output_without_affine():
    head = MLPHead(MLPHead.Config(hidden_dims=[8], out_dim=6, last_batch_norm=True), in_dim=3)
    last = head.net[-1]
    assert isinstance(last, nn.BatchNorm1d) and not last.affine
    out = head.train()(torch.randn(32, 3) * 5 + 3)
    # Training-mode BN: zero mean, unit (biased) variance per feature over the batch.
    torch.testing.assert_close(out.mean(0), torch.zeros(6), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.var(0, unbiased=False), torch.ones(6), atol=1e-3, rtol=0)


def test_without_batch_norm_and_hidden_layers_matches_hand_computation():
    torch.manual_seed(0)
    head = MLPHead(MLPHead.Config(hidden_dims=[4], out_dim=2, batch_norm=False), in_dim=3)
    assert layer_types(head) == [nn.Linear, nn.ReLU, nn.Linear]
    x = torch.randn(5, 3)
    l1, l2 = head.net[0], head.net[2]
    expected = torch.relu(x @ l1.weight.T + l1.bias) @ l2.weight.T + l2.bias
    torch.testing.assert_close(head(x), expected)
    linear = MLPHead(MLPHead.Config(hidden_dims=[], out_dim=7), in_dim=3)
    assert layer_types(linear) == [nn.Linear] and linear(x).shape == (5, 7)


def test_config_rejects_bad_widths_and_unknown_fields():
    with pytest.raises(ValidationError):
        MLPHead.Config(hidden_dims=[0])
    with pytest.raises(ValidationError):
        MLPHead.Config(out_dim=0)
    with pytest.raises(ValidationError):
        MLPHead.Config(hiden_dims=[3])


def test_registered_as_the_mlp_head():
    assert get_plugin("head", "mlp") is MLPHead
