"""Speed switches of the recipe (``train.fused_optimizer``, ...) change how a step is computed, not what: a few steps
of the tiny I-JEPA with and without each give the same loss curve and weights, within float tolerance."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from jepaflow.config import load_recipe
from jepaflow.engine import kernels
from jepaflow.engine.build import build_objective
from jepaflow.engine.checkpoint import load_checkpoint, rng_state
from jepaflow.engine.kernels import onednn_linear_available
from jepaflow.engine.logging import read_metrics
from jepaflow.engine.trainer import TrainStep, train

STEPS = 6


def run(tiny_recipe, name: str, train_patch: dict, **patch) -> tuple[list[float], dict[str, torch.Tensor]]:
    r = tiny_recipe({"output_dir": str(Path(tiny_recipe()["output_dir"]).parent / name),
                     "train": {"max_steps": STEPS, **train_patch}, **patch})
    train(load_recipe(r))
    losses = [rec["loss"] for rec in read_metrics(Path(r["output_dir"]) / "metrics.jsonl")]
    weights = load_checkpoint(Path(r["output_dir"]) / "checkpoints" / "last.pt")["objective"]
    return losses, weights


def assert_same_run(a, b, rtol: float, atol: float) -> None:
    (la, wa), (lb, wb) = a, b
    assert len(la) == len(lb) == STEPS
    assert la == pytest.approx(lb, rel=rtol, abs=atol)
    assert la[-1] < la[0]  # they learn (lr warmup from 1e-4): not two identical no-ops
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=rtol, atol=atol, msg=k)


def test_fused_adamw_follows_the_default_adamw(tiny_recipe):
    plain = run(tiny_recipe, "plain", {"fused_optimizer": False})
    fused = run(tiny_recipe, "fused", {"fused_optimizer": True})
    assert_same_run(plain, fused, rtol=1e-4, atol=1e-6)


def test_fused_optimizer_switch_selects_the_kernel_and_survives_resume(tiny_recipe):
    recipe = load_recipe(tiny_recipe({"train": {"fused_optimizer": True}}))
    objective = build_objective(recipe)
    step = TrainStep(recipe, objective, torch.device("cpu"), steps_per_epoch=8)
    assert all(g["fused"] for g in step.optimizer.param_groups)
    saved = {**step.state_dict(), "rng": rng_state()}  # a checkpoint of a fused run, resumed with the switch off
    plain = TrainStep(load_recipe(tiny_recipe({"train": {"fused_optimizer": False}})), objective,
                      torch.device("cpu"), steps_per_epoch=8)
    plain.load_state_dict(saved, Path("last.pt"), total_steps=16)
    assert not any(g["fused"] for g in plain.optimizer.param_groups)


@pytest.mark.skipif(not onednn_linear_available(), reason="this torch has no oneDNN linear op")
def test_onednn_linear_follows_torch_linear(tiny_recipe, monkeypatch):
    monkeypatch.setattr(kernels, "MIN_MACS", 0)  # the tiny model's GEMMs would otherwise stay on F.linear
    calls = []
    real = kernels._gemm
    monkeypatch.setattr(kernels, "_gemm", lambda *a: calls.append(1) or real(*a))
    torch_blas = run(tiny_recipe, "blas", {"onednn_linear": False})
    assert not calls
    onednn = run(tiny_recipe, "onednn", {"onednn_linear": True})
    assert calls  # the switch really changed the kernels
    assert_same_run(torch_blas, onednn, rtol=1e-4, atol=1e-5)


def test_grad_checkpointing_follows_the_plain_backward(tiny_recipe):
    # drop path draws random numbers in the forward: the recomputation must draw the same ones
    stochastic = {"encoder": {"drop_path_rate": 0.3}, "predictor": {"drop_path_rate": 0.3, "depth": 2}}
    plain = run(tiny_recipe, "plain", {"grad_checkpointing": False}, **stochastic)
    recomputed = run(tiny_recipe, "ckpt", {"grad_checkpointing": True}, **stochastic)
    assert_same_run(plain, recomputed, rtol=1e-5, atol=1e-6)


def test_grad_checkpointing_recomputes_every_block(tiny_recipe, monkeypatch):
    recipe = load_recipe(tiny_recipe({"train": {"grad_checkpointing": True}, "predictor": {"depth": 3}}))
    objective = build_objective(recipe)
    TrainStep(recipe, objective, torch.device("cpu"), steps_per_epoch=8)
    assert objective.encoder.grad_checkpointing and objective.predictor.grad_checkpointing
    checkpointed = []
    real = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint",
                        lambda fn, *a, **k: checkpointed.append(fn) or real(fn, *a, **k))
    batch = next(iter(_one_batch(recipe)))
    objective(batch).loss.backward()
    # the context encoder's 2 blocks and the predictor's first 2 (its last computes only the target rows); the
    # target encoder runs without autograd, nothing to recompute
    assert checkpointed == [*objective.encoder.blocks, *objective.predictor.predictor_blocks[:2]]


def _one_batch(recipe):
    from jepaflow.engine.build import build_dataset, build_masker
    from jepaflow.engine.data import MaskingCollator, SeededItems

    ds = SeededItems(build_dataset(recipe, "train", augment=True), recipe.seed)
    collate = MaskingCollator(build_masker(recipe), (4, 4), recipe.seed)
    yield collate([ds[(0, 0, i, i)] for i in range(8)])


@pytest.mark.slow  # compiling, even this tiny model, takes about a minute on 2 CPU cores
def test_compile_follows_eager(tiny_recipe):
    eager = run(tiny_recipe, "eager", {"compile": False})
    compiled = run(tiny_recipe, "compiled", {"compile": True})
    assert_same_run(eager, compiled, rtol=1e-3, atol=1e-5)
