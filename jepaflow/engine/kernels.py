"""fp32 linear layers on CPU through oneDNN's GEMM (``train.onednn_linear``).

torch computes an fp32 ``F.linear`` on CPU with its BLAS, Intel MKL in the official wheels. On CPUs where MKL does
not pick its fastest kernels (on the AMD EPYC with AVX-512 of docs/benchmarks.md it runs at 41-53 GFLOP/s per core),
oneDNN, which torch also ships and selects kernels by instruction set, computes the same fp32 products about 2x
faster (90-116 GFLOP/s there). :func:`use_onednn_linear` turns every ``nn.Linear`` of a model into a
:class:`OneDNNLinear` (same parameters and state-dict names) whose fp32 CPU forward, and the two GEMMs of its
backward, run on oneDNN; everything else (CUDA, bf16 autocast, other dtypes) takes ``F.linear`` as before. Inputs,
weights, accumulation and outputs stay fp32: results agree with torch's to fp32 rounding
(tests/engine/test_kernels.py), not bf16's. (A module, not a ``TorchFunctionMode`` around the forward: a mode is
not active in the backward pass, where activation checkpointing recomputes the forward, which must take the same
path.)

The op used is ``torch.ops.mkldnn._linear_pointwise`` (what torch.compile's CPU backend calls for linear layers);
:func:`onednn_linear_available` checks once that it exists and agrees with ``F.linear``, else the mode does nothing.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _gemm(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``x @ weight.T + bias`` for 2-D ``x`` ``(T, in)`` and ``weight`` ``(out, in)`` (either may be a strided view)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


#: GEMMs smaller than this many multiply-adds stay on ``F.linear``: there the autograd-function and padding overhead
#: (tens of microseconds) outweighs oneDNN's faster kernel (measured, docs/benchmarks.md)
MIN_MACS = 1 << 24


def bucket_rows(rows: int) -> int:
    """``rows`` rounded up to a multiple of 1/16 of its power of two (and of 16): at most 1/16 more rows.

    oneDNN builds (JIT-compiles) a kernel per GEMM shape, a few milliseconds each, and I-JEPA's token counts change
    from batch to batch with the masks; padding the token dimension to these buckets bounds the number of shapes,
    so that the kernels are built once and then found in oneDNN's cache.
    """
    step = max(16, 1 << max(0, rows.bit_length() - 5))
    return -(-rows // step) * step


class _LinearFunction(torch.autograd.Function):
    """``F.linear`` with its forward and both backward GEMMs on oneDNN: ``y = x W^T + b``, ``dx = dy W``,
    ``dW = dy^T x``, ``db = sum(dy)``. The token rows are zero-padded to :func:`bucket_rows` (zero rows add nothing
    to ``dW`` and their outputs are dropped)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        x2 = x.reshape(-1, x.shape[-1])  # (T, in)
        rows = x2.shape[0]
        padded = bucket_rows(rows)
        if padded != rows:
            x2 = F.pad(x2, (0, 0, 0, padded - rows))
        ctx.save_for_backward(x2, weight)
        ctx.rows, ctx.x_shape, ctx.has_bias = rows, x.shape, bias is not None
        y = _gemm(x2, weight, bias)[:rows]  # (T, out)
        return y.reshape(*x.shape[:-1], weight.shape[0])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        x2, weight = ctx.saved_tensors
        rows = ctx.rows
        g = grad.reshape(-1, grad.shape[-1])  # (T, out)
        if x2.shape[0] != rows:
            g = F.pad(g, (0, 0, 0, x2.shape[0] - rows))
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = _gemm(g, weight.t(), None)[:rows].reshape(ctx.x_shape)  # (T, out) @ (out, in)
        if ctx.needs_input_grad[1]:
            dw = _gemm(g.t(), x2.t(), None)  # (out, T) @ (T, in)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = g.sum(0)
        return dx, dw, db


@functools.cache
def onednn_linear_available() -> bool:
    """Whether this torch has the oneDNN linear op and it agrees with ``F.linear`` (checked once)."""
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        g = torch.Generator().manual_seed(0)
        x, w, b = (torch.randn(s, generator=g) for s in ((5, 7), (3, 7), (3,)))
        return bool(torch.allclose(_gemm(x, w, b), F.linear(x, w, b), rtol=1e-5, atol=1e-5))
    except (RuntimeError, AttributeError, NotImplementedError):
        return False


class OneDNNLinear(nn.Linear):
    """``nn.Linear`` whose fp32 CPU forward and backward GEMMs run on oneDNN (other dtypes, devices, bf16
    autocast and GEMMs under :data:`MIN_MACS`: ``F.linear``). Made from existing layers by
    :func:`use_onednn_linear`."""

    def forward(self, x: Tensor) -> Tensor:
        w, b = self.weight, self.bias
        if (x.device.type == "cpu" and x.dtype == w.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
                and x.numel() * w.shape[0] >= MIN_MACS):
            return _LinearFunction.apply(x, w, b)
        return F.linear(x, w, b)


def use_onednn_linear(module: nn.Module) -> int:
    """Turn every plain ``nn.Linear`` inside ``module`` into a :class:`OneDNNLinear`, in place (the class changes,
    the parameters and their names stay). Returns how many; 0 when oneDNN's linear is unavailable."""
    if not onednn_linear_available():
        return 0
    count = 0
    for m in module.modules():
        if type(m) is nn.Linear:
            m.__class__ = OneDNNLinear
            count += 1
    return count
