#!/usr/bin/env python
"""The parameter-update part of an I-JEPA step alone: AdamW and the EMA of the target encoder.

Builds the I-JEPA objective of a model size (as ``train_step.py`` does), gives every trainable parameter a random
gradient, and times, interleaved over ``--rounds``:

* ``torch.optim.AdamW`` with jepaflow's two parameter groups, as ``fused=True`` (``train.fused_optimizer``, the
  default), ``foreach=True`` and the for-loop implementation (``foreach=False``; what torch picks for CPU tensors
  when neither is given, hence what the official code runs on a CPU);
* the EMA update of the target encoder: jepaflow's ``torch._foreach_lerp_`` over all tensors, against the official
  loop (``param_k.data.mul_(m).add_((1 - m) * param_q.detach().data)`` per parameter).

These are the parts of the step that a switch changes without touching the model's arithmetic, so measuring them
apart gives their share without the noise of a whole step.

    python benchmarks/optim_step.py --width 192 --depth 6 --heads 3 --img 32 --patch 4
    python benchmarks/optim_step.py --size small --img 224 --patch 16
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import command_line, emit, machine_lines, sync, table  # noqa: E402
from train_step import encoder_dims, parse_args, recipe_dict  # noqa: E402

from jepaflow.config import load_recipe  # noqa: E402
from jepaflow.engine.build import build_objective  # noqa: E402
from jepaflow.engine.optim import build_optimizer  # noqa: E402
from jepaflow.layers.target import ema_update_  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                       else "cpu")
    recipe = load_recipe(recipe_dict(args, encoder_dims(args)))
    torch.manual_seed(0)
    with dev:
        objective = build_objective(recipe)
    params = [p for p in objective.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    optimizers = {
        "AdamW fused (jepaflow default)": build_optimizer(objective, recipe.optim, fused=True),
        "AdamW foreach": torch.optim.AdamW(build_optimizer(objective, recipe.optim).param_groups, foreach=True),
        "AdamW for-loop (foreach=False: torch's default for CPU tensors)": torch.optim.AdamW(
            build_optimizer(objective, recipe.optim).param_groups, foreach=False),
    }
    online = list(objective.encoder.parameters())

    def official_ema() -> None:
        with torch.no_grad():
            for q, k in zip(objective.encoder.parameters(), objective.target_encoder.parameters()):
                k.data.mul_(0.996).add_((1.0 - 0.996) * q.detach().data)

    work = {name: opt.step for name, opt in optimizers.items()}
    pairs = [(objective.encoder, objective.target_encoder)]
    work["EMA foreach lerp (jepaflow)"] = lambda: ema_update_(pairs, 0.996)
    work["EMA per-parameter loop (official)"] = official_ema
    times: dict[str, list[float]] = {k: [] for k in work}
    for fn in work.values():  # state allocation, first-call costs
        fn()
    for r in range(args.rounds):
        names = list(work)[r % len(work):] + list(work)[: r % len(work)]
        for name in names:
            for _ in range(args.steps):
                sync(dev)
                t0 = time.perf_counter()
                work[name]()
                sync(dev)
                times[name].append(time.perf_counter() - t0)
    n_params = sum(p.numel() for p in params)
    rows = [[name, statistics.median(t) * 1000, min(t) * 1000, len(t)] for name, t in times.items()]
    text = "\n".join([
        f"### Parameter updates: {n_params / 1e6:.1f} M trainable parameters in {len(params)} tensors "
        f"(EMA: {sum(p.numel() for p in online) / 1e6:.1f} M in {len(online)}), {dev.type}", "",
        *machine_lines(command_line(argv)), "",
        *table(["update", "ms (median)", "ms (min)", "calls"], rows), ""])
    emit(text, args.out, args.append)
    return 0


if __name__ == "__main__":
    sys.exit(main())
