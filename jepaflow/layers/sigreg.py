"""SIGReg: Sketched Isotropic Gaussian Regularization, the anti-collapse term of LeJEPA.

Balestriero & LeCun, "LeJEPA: Provable and Scalable Self-Supervised Learning Without the Heuristics" (arXiv
2511.08544), sec. 4 (def. 2, eq. Epps-Pulley), sec. 5.1 and Algorithm 1; reference code rbalestr-lab/lejepa
(``lejepa/univariate/epps_pulley.py:EppsPulley``, ``lejepa/multivariate/slicing.py:SlicingUnivariateTest``).

Embeddings ``z`` ``(N, D)`` should be distributed as the isotropic Gaussian ``N(0, I_D)``. By Cramer-Wold,
that holds iff every 1-D projection ``a^T z`` (``a`` a unit vector) is ``N(0, 1)``. SIGReg draws ``S`` random
unit directions (re-drawn at every step), projects the embeddings on them and averages a univariate
goodness-of-fit statistic over the slices::

    SIGReg(z) = (1/S) sum_{s=1..S} EP({a_s^T z_n}_{n=1..N})

The univariate statistic is Epps-Pulley's (1983), the weighted L2 distance between the empirical
characteristic function (ECF) of the sample and the standard normal's characteristic function ``phi(t) =
exp(-t^2/2)``::

    EP(x_1..x_N) = N * integral |phi_hat(t) - phi(t)|^2 w(t) dt,     phi_hat(t) = (1/N) sum_n exp(i t x_n)

with the integral replaced by the trapezoidal rule on ``num_points`` equally spaced knots over ``[-t_max,
t_max]``. Defaults are the paper's: 17 knots on ``[-5, 5]`` (Algorithm 1; sec. 6.1 recommends "17 integration
points, an integration domain of [-5, 5], and 1024 slices"), Gaussian window ``w(t) = exp(-t^2/2)`` (Algorithm
1: the window equals the target CF; the prose of sec. 4.2.3 writes the window as ``exp(-t^2/sigma^2)`` "with
sigma commonly set to 1" as an example -- we follow Algorithm 1, which is also what the official code does).

Symmetry: ``phi_hat(-t)`` is the complex conjugate of ``phi_hat(t)`` and ``phi``, ``w`` are even, so the
integrand is even. On the symmetric grid the trapezoidal sum therefore equals the sum over the knots ``t >=
0`` with the weights of the ``t > 0`` knots doubled; we evaluate only those (half the cos/sin work, the same
value to rounding). The official code uses the same trick (sec. 5.1: "we leverage the symmetry of the
integrand").

Distributed training (Algorithm 1, "empirical CF -- gathered across devices"): the ECF is a mean over samples,
so the global ECF is the mean of the per-rank ECFs (equal per-rank batch sizes) and ``N`` becomes the global
batch. Each rank then computes the same statistic on the global batch. The average goes through
``jepaflow.layers.distributed.all_gather_with_grad``, whose backward sums the gradients of every rank's
(identical) copy of the loss, so that DDP's gradient averaging yields the gradient of the global statistic.
Slice directions must be identical on every rank: :class:`SIGReg` seeds them with its step counter, which all
ranks advance alike (Algorithm 1 seeds a generator with ``global_step``).

Everything here runs in float32 even under bf16 autocast: the arguments ``t * x`` reach ~15 rad, where bf16's
3 significant digits would make ``cos``/``sin`` meaningless.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from jepaflow.layers.distributed import all_gather_no_grad, all_gather_with_grad, world_size

# ------------------------------------------------------------------------------------------------------------
# Pure functions
# ------------------------------------------------------------------------------------------------------------


def epps_pulley_quadrature(
    t_max: float = 5.0, num_points: int = 17, device: torch.device | str | None = None
) -> tuple[Tensor, Tensor]:
    """Knots ``t >= 0`` and weights of the folded trapezoidal rule for the Epps-Pulley integral.

    The full rule has ``num_points`` equally spaced knots on ``[-t_max, t_max]`` (paper: 17 on ``[-5, 5]``),
    trapezoid weights ``dt`` (``dt/2`` at both ends), multiplied by the window ``w(t) = exp(-t^2/2)``. Folding
    the even integrand onto ``t >= 0`` keeps the non-negative knots and doubles the weight of every knot but
    ``t = 0``.

    Returns:
        ``t`` ``(T,)`` and ``weights`` ``(T,)`` float32, ``T = ceil(num_points / 2)``;
        ``sum_j weights_j f(t_j)`` equals the full trapezoidal sum of ``f(t) w(t)`` for any even ``f``.
    """
    if num_points < 2 or t_max <= 0:
        raise ValueError(f"need num_points >= 2 and t_max > 0, got {num_points}, {t_max}")
    dt = 2.0 * t_max / (num_points - 1)
    first = num_points // 2  # index of the first knot with t >= 0 (t = 0 exactly when num_points is odd)
    t = torch.tensor([-t_max + j * dt for j in range(first, num_points)], dtype=torch.float64)
    trapezoid = torch.full_like(t, dt)
    trapezoid[-1] = dt / 2  # the end knot t_max
    fold = torch.full_like(t, 2.0)
    if num_points % 2 == 1:
        t[0] = 0.0
        fold[0] = 1.0  # t = 0 has no mirror image
    weights = trapezoid * fold * torch.exp(-0.5 * t.square())
    return t.to(device=device, dtype=torch.float32), weights.to(device=device, dtype=torch.float32)


def epps_pulley(
    x: Tensor,
    t_max: float = 5.0,
    num_points: int = 17,
    gather: bool = True,
    quadrature: tuple[Tensor, Tensor] | None = None,
    sample_weight: Tensor | None = None,
) -> Tensor:
    """Epps-Pulley statistic of each column of ``x`` against ``N(0, 1)`` (LeJEPA sec. 4.2.3, Algorithm 1).

    ``EP = N * sum_j w_j * [ (mean_n cos(t_j x_n) - exp(-t_j^2/2))^2 + (mean_n sin(t_j x_n))^2 ]``, the
    trapezoidal approximation of ``N * integral |phi_hat(t) - exp(-t^2/2)|^2 exp(-t^2/2) dt`` (``phi_hat =
    cos-mean + i sin-mean``; the target CF is real).

    Args:
        x: ``(..., N, S)``: ``N`` samples of ``S`` univariate variables (the slices), any leading dims
            (e.g. views).
        t_max, num_points: the quadrature grid on ``[-t_max, t_max]`` (paper: 5.0, 17).
        gather: under ``torch.distributed`` with several ranks, average the ECF over ranks and use the global
            ``N`` (Algorithm 1); ignored in a single process.
        quadrature: precomputed ``epps_pulley_quadrature(...)`` output (then ``t_max``, ``num_points`` are
            unused).
        sample_weight: ``(..., N)`` non-negative weights of the samples (e.g. 0 for padding), or None (all 1).
            The ECF is then the weighted mean and ``N`` the sum of the weights.
    Returns:
        ``(..., S)`` float32 statistics, >= 0. Under H0 its expectation is about
        ``integral (1 - exp(-t^2)) exp(-t^2/2) dt ~ 1.06`` whatever ``N``; away from H0 it grows like ``N``.
    """
    t, weights = quadrature if quadrature is not None else epps_pulley_quadrature(t_max, num_points, x.device)
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = x.float()
        xt = x.unsqueeze(-1) * t  # (..., N, S, T)
        ranks = world_size() if gather else 1
        if sample_weight is None:
            ecf = torch.stack([xt.cos().mean(-3), xt.sin().mean(-3)])  # (2, ..., S, T): real and imaginary parts
            n = x.shape[-2]
            if ranks > 1:
                ecf = all_gather_with_grad(ecf.unsqueeze(0)).mean(0)  # (W, 2, ..., S, T) -> global ECF
                n = n * ranks
        else:
            w = sample_weight.float()[..., None, None]  # (..., N, 1, 1)
            sums = torch.stack([(xt.cos() * w).sum(-3), (xt.sin() * w).sum(-3)])  # (2, ..., S, T)
            n = sample_weight.float().sum(-1)[..., None]  # (..., 1)
            if ranks > 1:  # the global weighted mean: sums and weights of every rank
                sums = all_gather_with_grad(sums.unsqueeze(0)).sum(0)
                n = all_gather_no_grad(n.unsqueeze(0)).sum(0)
            ecf = sums / n.clamp_min(1e-12).unsqueeze(-1)
        target = torch.exp(-0.5 * t.square())  # standard normal CF, real
        err = (ecf[0] - target).square() + ecf[1].square()  # |phi_hat - phi|^2, (..., S, T)
        return n * (err @ weights)


def random_directions(
    dim: int,
    num_slices: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """``(dim, num_slices)`` unit columns, uniform on the sphere (normalized Gaussian vectors, Alg. 1)."""
    a = torch.randn(dim, num_slices, generator=generator, device=device, dtype=torch.float32)
    return a / a.norm(dim=0, keepdim=True)


def sigreg(
    z: Tensor,
    directions: Tensor,
    t_max: float = 5.0,
    num_points: int = 17,
    gather: bool = True,
    quadrature: tuple[Tensor, Tensor] | None = None,
    sample_weight: Tensor | None = None,
) -> Tensor:
    """SIGReg of embeddings (LeJEPA def. 2 with the Epps-Pulley test): the slice-averaged statistic.

    Args:
        z: ``(..., N, D)`` embeddings; leading dims are independent sample sets (LeJEPA applies SIGReg to
            each view separately and averages over views, eq. LeJEPA / Algorithm 2).
        directions: ``(D, S)`` unit columns, e.g. :func:`random_directions`; shared by all leading dims.
        t_max, num_points, gather, quadrature, sample_weight: see :func:`epps_pulley`.
    Returns:
        ``(...)`` float32: ``mean_s EP(z @ directions[:, s])``.
    """
    with torch.autocast(device_type=z.device.type, enabled=False):
        projected = z.float() @ directions.to(device=z.device, dtype=torch.float32)  # (..., N, S)
    return epps_pulley(projected, t_max, num_points, gather, quadrature, sample_weight).mean(-1)


def epps_pulley_expected_null(t_max: float = math.inf) -> float:
    """Expectation of the (exact-integral) statistic for a standard normal sample: ``integral_{-t_max}^{t_max}
    (1 - exp(-t^2)) exp(-t^2/2) dt`` (``N * E|phi_hat - phi|^2 = 1 - phi^2``): a reference level for logs and
    tests."""
    if math.isinf(t_max):
        return math.sqrt(2 * math.pi) - math.sqrt(2 * math.pi / 3)
    return math.sqrt(2 * math.pi) * math.erf(t_max / math.sqrt(2)) - math.sqrt(2 * math.pi / 3) * math.erf(
        t_max * math.sqrt(1.5)
    )


# ------------------------------------------------------------------------------------------------------------
# Module: owns the quadrature and the per-step direction sampling
# ------------------------------------------------------------------------------------------------------------


class SIGReg(nn.Module):
    """SIGReg with fresh random directions at every call, identical on every rank.

    Directions are drawn from a generator seeded with the module's call counter (Algorithm 1 seeds with
    ``global_step``; the official ``SlicingUnivariateTest`` keeps such a counter). Every rank makes the same
    calls, so every rank draws the same directions without communication. The counter is a Python int (no
    device sync to read it) saved in the state dict as extra state, so a resumed run continues the same
    direction sequence.

    ``forward(z (..., N, D), sample_weight (..., N) | None) -> (...)``: see :func:`sigreg`.
    """

    def __init__(self, num_slices: int = 1024, t_max: float = 5.0, num_points: int = 17, gather: bool = True):
        super().__init__()
        self.num_slices, self.t_max, self.num_points, self.gather = num_slices, t_max, num_points, gather
        t, weights = epps_pulley_quadrature(t_max, num_points)
        self.register_buffer("t", t, persistent=False)
        self.register_buffer("weights", weights, persistent=False)
        self.calls = 0
        self._generator: torch.Generator | None = None

    def directions(self, dim: int, device: torch.device, seed: int) -> Tensor:
        """The ``(dim, num_slices)`` directions of call number ``seed`` (deterministic, sampled on device)."""
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device)
        self._generator.manual_seed(seed)
        return random_directions(dim, self.num_slices, self._generator, device)

    def forward(self, z: Tensor, sample_weight: Tensor | None = None) -> Tensor:
        directions = self.directions(z.shape[-1], z.device, self.calls)
        self.calls += 1
        return sigreg(z, directions, gather=self.gather, quadrature=(self.t, self.weights),
                      sample_weight=sample_weight)

    def get_extra_state(self) -> dict[str, Any]:
        return {"calls": self.calls}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.calls = int(state["calls"])

    def extra_repr(self) -> str:
        return f"num_slices={self.num_slices}, t_max={self.t_max}, num_points={self.num_points}"
