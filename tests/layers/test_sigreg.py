"""SIGReg / Epps-Pulley (LeJEPA, arXiv 2511.08544, sec. 4.2.3 and Algorithm 1): the statistic against an
explicit quadrature and against the closed-form integral, its behaviour on Gaussian / non-Gaussian samples,
SIGReg on isotropic vs degenerate embeddings, gradients, per-step directions and the cross-rank ECF average
(simulated and with two real gloo processes)."""

from __future__ import annotations

import math

import pytest
import torch
from gloo import gloo_group, spawn_ranks

import jepaflow.layers.sigreg as sigreg_mod
from jepaflow.layers.sigreg import (
    SIGReg,
    epps_pulley,
    epps_pulley_expected_null,
    epps_pulley_quadrature,
    random_directions,
    sigreg,
)


def ep_by_hand(xs: list[float], t_max: float = 5.0, points: int = 17) -> float:
    """N * trapezoid over the full grid on [-t_max, t_max] of |phi_hat(t) - exp(-t^2/2)|^2 * exp(-t^2/2)."""
    n = len(xs)
    dt = 2 * t_max / (points - 1)
    total = 0.0
    for j in range(points):
        t = -t_max + j * dt
        re = sum(math.cos(t * x) for x in xs) / n
        im = sum(math.sin(t * x) for x in xs) / n
        phi = math.exp(-t * t / 2)
        integrand = ((re - phi) ** 2 + im**2) * math.exp(-t * t / 2)
        total += integrand * (dt / 2 if j in (0, points - 1) else dt)
    return n * total


def ep_exact(xs: list[float]) -> float:
    """N * integral over R of |phi_hat - phi|^2 exp(-t^2/2) dt in closed form (Gaussian integrals of cosines):
    int cos(t d) e^{-t^2/2} = sqrt(2 pi) e^{-d^2/2}; int cos(t x) e^{-t^2} = sqrt(pi) e^{-x^2/4};
    int e^{-3 t^2/2} = sqrt(2 pi / 3)."""
    n = len(xs)
    cross = sum(math.exp(-((a - b) ** 2) / 2) for a in xs for b in xs) * math.sqrt(2 * math.pi) / n**2
    mixed = 2 * math.sqrt(math.pi) * sum(math.exp(-x * x / 4) for x in xs) / n
    return n * (cross - mixed + math.sqrt(2 * math.pi / 3))


SAMPLE = [0.3, -1.2, 0.8, 2.0, -0.5]
SAMPLE_2 = [1.5, 1.1, 0.9, 2.4, 1.7]  # shifted: far from N(0, 1)


def test_epps_pulley_equals_explicit_full_grid_quadrature():
    x = torch.tensor([SAMPLE, SAMPLE_2]).T  # (N=5, S=2): two slices at once
    got = epps_pulley(x, t_max=5.0, num_points=17)
    want = [ep_by_hand(SAMPLE), ep_by_hand(SAMPLE_2)]
    assert got.shape == (2,)
    torch.testing.assert_close(got, torch.tensor(want), rtol=1e-5, atol=1e-6)
    # even knot counts fold too (no t = 0 knot), and other ranges
    torch.testing.assert_close(epps_pulley(x[:, :1], t_max=3.0, num_points=10),
                               torch.tensor([ep_by_hand(SAMPLE, 3.0, 10)]), rtol=1e-5, atol=1e-6)


def test_fine_quadrature_converges_to_the_exact_integral():
    x = torch.tensor(SAMPLE)[:, None]
    fine = epps_pulley(x, t_max=12.0, num_points=601)
    assert fine.item() == pytest.approx(ep_exact(SAMPLE), rel=1e-5)
    # the paper's 17 knots on [-5, 5] are already close for unit-scale samples
    assert epps_pulley(x).item() == pytest.approx(ep_exact(SAMPLE), rel=0.05)


def test_folded_quadrature_weights():
    t, w = epps_pulley_quadrature(5.0, 17)
    assert torch.allclose(t, torch.linspace(0, 5, 9))
    dt = 0.625
    window = torch.exp(-0.5 * t.double() ** 2)
    # t = 0 counted once, the inner knots twice (mirror images), the end knot t = 5 with half a step, twice
    expected = torch.tensor([dt] + [2 * dt] * 7 + [dt], dtype=torch.float64) * window
    torch.testing.assert_close(w.double(), expected, rtol=1e-6, atol=0)


def test_statistic_small_for_gaussian_large_for_uniform_and_collapsed():
    g = torch.Generator().manual_seed(0)
    n = 4096
    gauss = torch.randn(n, 8, generator=g)
    uniform = (torch.rand(n, 8, generator=g) - 0.5) * math.sqrt(12)  # mean 0, variance 1: only shape differs
    constant = torch.zeros(n, 8)
    ep_gauss, ep_unif, ep_const = epps_pulley(gauss), epps_pulley(uniform), epps_pulley(constant)
    null = epps_pulley_expected_null(5.0)
    assert null == pytest.approx(1.059, abs=1e-3)
    # under H0 the statistic stays O(1) whatever N (expectation ~1.06); otherwise it grows like N
    assert ep_gauss.mean().item() == pytest.approx(null, rel=0.35)
    assert (ep_gauss < 4).all()
    assert (ep_unif > 5 * ep_gauss.mean()).all()
    # constant sample: N * int (1 - e^{-t^2/2})^2 e^{-t^2/2} dt = N (sqrt(2pi) - 2 sqrt(pi) + sqrt(2pi/3))
    const_exact = n * (math.sqrt(2 * math.pi) - 2 * math.sqrt(math.pi) + math.sqrt(2 * math.pi / 3))
    torch.testing.assert_close(ep_const, torch.full((8,), const_exact), rtol=0.02, atol=0)
    assert (ep_const > 100 * ep_gauss.mean()).all()


def test_random_directions_are_unit_and_seeded():
    a = random_directions(16, 32, torch.Generator().manual_seed(3))
    assert a.shape == (16, 32)
    torch.testing.assert_close(a.norm(dim=0), torch.ones(32))
    assert torch.equal(a, random_directions(16, 32, torch.Generator().manual_seed(3)))


def test_sigreg_prefers_isotropic_gaussian():
    g = torch.Generator().manual_seed(1)
    n, d = 1024, 16
    dirs = random_directions(d, 256, g)
    iso = torch.randn(n, d, generator=g)
    aniso = iso * torch.linspace(0.2, 3.0, d)  # Gaussian but not isotropic
    shifted = iso + 1.0  # isotropic but not centred
    low_rank = torch.randn(n, 2, generator=g) @ torch.randn(2, d, generator=g)  # dimensional collapse
    collapsed = torch.zeros(n, d) + torch.randn(d, generator=g)  # complete collapse
    values = {k: sigreg(v, dirs).item() for k, v in
              dict(iso=iso, aniso=aniso, shifted=shifted, low_rank=low_rank, collapsed=collapsed).items()}
    assert values["iso"] < 2.0
    for k in ("aniso", "shifted", "low_rank", "collapsed"):
        assert values[k] > 10 * values["iso"], values
    # leading dims are independent sets (views): same directions, one value each
    stacked = sigreg(torch.stack([iso, aniso]), dirs)
    torch.testing.assert_close(stacked, torch.tensor([values["iso"], values["aniso"]]))


def test_gradients_flow_and_descent_restores_isotropy():
    g = torch.Generator().manual_seed(2)
    z = (torch.randn(512, 8, generator=g) * torch.tensor([0.1, 0.2, 3.0, 1, 1, 1, 1, 1])).requires_grad_(True)
    dirs = random_directions(8, 64, g)
    loss = sigreg(z, dirs)
    loss.backward()
    assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    start = loss.item()
    # directions resampled at every step, as LeJEPA does
    opt = torch.optim.SGD([z], lr=5.0)
    for _ in range(120):
        opt.zero_grad()
        sigreg(z, random_directions(8, 64, g)).backward()
        opt.step()
    final = sigreg(z.detach(), dirs).item()
    assert final < 0.05 * start
    std = z.detach().std(0)
    assert (std[:2] > 0.8).all() and std[2] < 2.0 and ((std[3:] > 0.85) & (std[3:] < 1.15)).all(), std


def test_float32_under_bf16_autocast():
    z = torch.randn(256, 8, generator=torch.Generator().manual_seed(4))
    dirs = random_directions(8, 16, torch.Generator().manual_seed(5))
    plain = sigreg(z, dirs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = sigreg(z.bfloat16(), dirs)
    assert auto.dtype == torch.float32
    torch.testing.assert_close(auto, sigreg(z.bfloat16().float(), dirs))
    assert plain.dtype == torch.float32


def test_module_draws_new_directions_each_call_identically_across_instances():
    z = torch.randn(128, 6, generator=torch.Generator().manual_seed(6))
    a, b = SIGReg(num_slices=32), SIGReg(num_slices=32)  # two "ranks"
    va = [a(z) for _ in range(3)]
    vb = [b(z) for _ in range(3)]
    assert all(torch.equal(x, y) for x, y in zip(va, vb))  # same directions on every rank
    assert len({float(v) for v in va}) == 3  # fresh directions at every step
    # the counter is saved and restored with the state dict (exact resume)
    c = SIGReg(num_slices=32)
    c.load_state_dict(a.state_dict())
    assert c.calls == 3 and torch.equal(c(z), a(z))
    # the module equals the pure function with the counter as seed
    d = SIGReg(num_slices=32)
    want = sigreg(z, random_directions(6, 32, torch.Generator().manual_seed(0)))
    torch.testing.assert_close(d(z), want)


def test_ecf_is_averaged_over_ranks(monkeypatch):
    """Two simulated ranks: the statistic each computes from its half plus the other's ECF equals the
    single-process statistic of the whole batch (Algorithm 1: ECF all-reduced, N = global batch)."""
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(7)) * 1.3
    full = epps_pulley(x)
    half_a, half_b = x[:32], x[32:]
    local_a = epps_pulley(half_a)
    recorded: dict[str, torch.Tensor] = {}

    def record(t):  # rank B's call: remember its ECF
        recorded["b"] = t
        return torch.cat([t, t])

    monkeypatch.setattr(sigreg_mod, "world_size", lambda: 2)
    monkeypatch.setattr(sigreg_mod, "all_gather_with_grad", record)
    epps_pulley(half_b)
    monkeypatch.setattr(sigreg_mod, "all_gather_with_grad", lambda t: torch.cat([t, recorded["b"]]))
    torch.testing.assert_close(epps_pulley(half_a), full, rtol=1e-5, atol=1e-6)
    # gather=False keeps it local
    monkeypatch.setattr(sigreg_mod, "all_gather_with_grad", lambda t: pytest.fail("must not gather"))
    assert torch.equal(epps_pulley(half_a, gather=False), local_a)
    assert not torch.allclose(local_a, full)


def _two_rank_worker(rank: int, init_file: str, out_dir: str) -> None:
    with gloo_group(rank, init_file):
        x = torch.load(f"{out_dir}/x.pt")[rank * 32:(rank + 1) * 32].clone().requires_grad_(True)
        dirs = torch.load(f"{out_dir}/dirs.pt")
        loss = sigreg(x, dirs)
        loss.backward()
        torch.save({"loss": loss.detach(), "grad": x.grad}, f"{out_dir}/rank{rank}.pt")


def test_two_real_ranks_match_one_process(tmp_path):
    """gloo, 2 processes, 32 rows each: every rank gets the statistic of all 64 rows, and its gradient (after
    the 1/world averaging DDP applies) is the single-process gradient of its rows."""
    g = torch.Generator().manual_seed(8)
    x = torch.randn(64, 6, generator=g) * torch.linspace(0.5, 2.0, 6)
    dirs = random_directions(6, 16, g)
    torch.save(x, tmp_path / "x.pt")
    torch.save(dirs, tmp_path / "dirs.pt")
    spawn_ranks(_two_rank_worker, tmp_path)
    xf = x.clone().requires_grad_(True)
    full = sigreg(xf, dirs)
    full.backward()
    for r in range(2):
        out = torch.load(tmp_path / f"rank{r}.pt")
        torch.testing.assert_close(out["loss"], full.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out["grad"] / 2, xf.grad[r * 32:(r + 1) * 32], rtol=1e-4, atol=1e-6)


def test_sample_weights_of_zero_and_one_drop_samples_and_are_averaged_over_ranks(monkeypatch):
    """0/1 weights give the statistic of the kept samples; integer weights the statistic of repeated samples;
    over two simulated ranks, each rank's weighted ECF sums and weight sums are combined."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(40, 3, generator=g) * 1.5
    keep = torch.rand(40, generator=g) > 0.3
    torch.testing.assert_close(epps_pulley(x, sample_weight=keep.float()), epps_pulley(x[keep]), rtol=1e-5,
                               atol=1e-6)
    rep = torch.tensor([1.0, 2.0, 3.0] * 13 + [1.0])
    torch.testing.assert_close(epps_pulley(x, sample_weight=rep), epps_pulley(x.repeat_interleave(rep.long(), 0)),
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(epps_pulley(x, sample_weight=torch.ones(40)), epps_pulley(x), rtol=1e-6, atol=1e-6)
    # two simulated ranks: the first half here, the second half's contributions as rank b would send them
    wa, wb = keep[:20].float(), keep[20:].float()
    t, _ = epps_pulley_quadrature()
    xt = x[20:].unsqueeze(-1) * t  # (20, 3, T)
    b_sums = torch.stack([(xt.cos() * wb[:, None, None]).sum(0), (xt.sin() * wb[:, None, None]).sum(0)])
    b_n = wb.sum().reshape(1)
    monkeypatch.setattr(sigreg_mod, "world_size", lambda: 2)
    monkeypatch.setattr(sigreg_mod, "all_gather_with_grad", lambda s_: torch.cat([s_, b_sums.unsqueeze(0)]))
    monkeypatch.setattr(sigreg_mod, "all_gather_no_grad", lambda n_: torch.cat([n_, b_n.unsqueeze(0)]))
    torch.testing.assert_close(epps_pulley(x[:20], sample_weight=wa), epps_pulley(x[keep], gather=False),
                               rtol=1e-5, atol=1e-6)
