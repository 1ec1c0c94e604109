import pytest
import torch
from torch import nn

from jepaflow.config import OptimConfig
from jepaflow.engine.optim import LARS, build_optimizer, split_decay


def test_no_decay_on_biases_and_1d():
    m = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    decay, no_decay = split_decay(m)
    assert {id(p) for p in decay} == {id(m[0].weight), id(m[2].weight)}
    assert {id(p) for p in no_decay} == {id(m[0].bias), id(m[1].weight), id(m[1].bias), id(m[2].bias)}
    opt = build_optimizer(m, OptimConfig(epochs=1, warmup_epochs=0))
    assert isinstance(opt, torch.optim.AdamW)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.04, 0.0]


def test_lars_step_matches_hand_computation():
    w = nn.Parameter(torch.tensor([3.0, 4.0]))  # ||w|| = 5
    b = nn.Parameter(torch.tensor([1.0]))
    opt = LARS([{"params": [w]}, {"params": [b], "lars": False}], lr=0.1, momentum=0.9, eta=0.01, weight_decay=0.0)
    opt.param_groups[0]["weight_decay"] = 0.5
    w.grad = torch.tensor([0.5, 0.0])
    b.grad = torch.tensor([2.0])
    opt.step()
    d = torch.tensor([0.5, 0.0]) + 0.5 * torch.tensor([3.0, 4.0])  # [2.0, 2.0], norm 2*sqrt(2)
    ratio = 0.01 * 5.0 / d.norm()
    torch.testing.assert_close(w.detach(), torch.tensor([3.0, 4.0]) - 0.1 * ratio * d)
    torch.testing.assert_close(b.detach(), torch.tensor([1.0 - 0.1 * 2.0]))
    # second step uses momentum
    b.grad = torch.tensor([1.0])
    opt.step()
    assert b.item() == pytest.approx(0.8 - 0.1 * (0.9 * 2.0 + 1.0))


def test_lars_from_config():
    m = nn.Linear(3, 3)
    opt = build_optimizer(m, OptimConfig(name="lars", epochs=1, warmup_epochs=0))
    assert isinstance(opt, LARS) and opt.param_groups[1]["lars"] is False
