"""The oneDNN linear layer computes torch's F.linear, forward and backward, in fp32."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import jepaflow.engine.kernels as kernels
from jepaflow.engine.kernels import OneDNNLinear, onednn_linear_available, use_onednn_linear

pytestmark = pytest.mark.skipif(not onednn_linear_available(), reason="this torch has no oneDNN linear op")


@pytest.fixture(autouse=True)
def every_size(monkeypatch):
    monkeypatch.setattr(kernels, "MIN_MACS", 0)  # the small shapes of these tests go to oneDNN too


def test_small_gemms_stay_on_torch_linear(monkeypatch):
    monkeypatch.setattr(kernels, "MIN_MACS", 1 << 24)
    calls = []
    real = kernels._LinearFunction.apply
    monkeypatch.setattr(kernels._LinearFunction, "apply", lambda *a: calls.append(a[0].shape) or real(*a))
    lin = torch.nn.Linear(256, 256)
    use_onednn_linear(lin)
    lin(torch.randn(100, 256))  # 6.6M multiply-adds
    lin(torch.randn(300, 256))  # 19.7M
    assert calls == [(300, 256)]


@pytest.mark.parametrize("rows", [1, 15, 16, 17, 100, 1000, 1792, 12345])
def test_row_buckets_bound_the_padding(rows):
    b = kernels.bucket_rows(rows)
    assert b >= rows and b % 16 == 0 and b - rows <= max(15, rows // 16)


def test_padded_rows_change_nothing():
    torch.manual_seed(0)
    lin = torch.nn.Linear(8, 5)
    use_onednn_linear(lin)
    x = torch.randn(17, 8, requires_grad=True)  # padded to 32 rows inside
    y = lin(x)
    y.square().sum().backward()
    ref = torch.nn.Linear(8, 5)
    ref.load_state_dict({k: v.detach() for k, v in lin.state_dict().items()})
    xr = x.detach().clone().requires_grad_()
    yr = ref(xr)
    yr.square().sum().backward()
    torch.testing.assert_close(y, yr, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(lin.weight.grad, ref.weight.grad, rtol=1e-5, atol=1e-6)


def forward_backward(layer, x):
    out = layer(x)
    (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
    return [out.detach(), x.grad, *(p.grad for p in layer.parameters())]


@pytest.mark.parametrize("shape", [(37, 24), (3, 11, 24)])
@pytest.mark.parametrize("bias", [True, False])
def test_forward_and_backward_equal_torch_linear(shape, bias):
    torch.manual_seed(0)
    plain = torch.nn.Linear(24, 40, bias=bias)
    fast = torch.nn.Linear(24, 40, bias=bias)
    fast.load_state_dict(plain.state_dict())
    assert use_onednn_linear(fast) == 1 and type(fast) is OneDNNLinear
    assert fast.state_dict().keys() == plain.state_dict().keys()
    x = torch.randn(*shape)
    ref = forward_backward(plain, x.clone().requires_grad_())
    calls = []
    real = kernels._gemm
    kernels._gemm = lambda *a: calls.append(1) or real(*a)
    try:
        got = forward_backward(fast, x.clone().requires_grad_())
    finally:
        kernels._gemm = real
    assert len(calls) == 3  # forward + both backward GEMMs went to oneDNN
    for a, r in zip(got, ref):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-4)


def test_non_contiguous_input():
    torch.manual_seed(0)
    lin = torch.nn.Linear(16, 8)
    use_onednn_linear(lin)
    x = torch.randn(16, 10).t()  # (10, 16), transposed storage
    torch.testing.assert_close(lin(x), F.linear(x, lin.weight, lin.bias), rtol=1e-6, atol=1e-6)


def test_other_dtypes_and_autocast_take_torch_linear():
    calls = []
    real = kernels._LinearFunction.apply
    kernels._LinearFunction.apply = lambda *a: calls.append(1) or real(*a)
    try:
        lin = torch.nn.Linear(3, 2)
        use_onednn_linear(lin)
        lin.double()(torch.randn(4, 3, dtype=torch.float64))
        lin.float()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = lin(torch.randn(4, 3))
        lin(torch.randn(4, 3))
    finally:
        kernels._LinearFunction.apply = real
    assert y.dtype == torch.bfloat16  # autocast still applies
    assert len(calls) == 1  # only the fp32 call outside autocast
