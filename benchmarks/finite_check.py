#!/usr/bin/env python
"""Cost of the finite-weights check made before every checkpoint, next to the cost of the checkpoint write.

For each recipe, the objective is built as the trainer builds it (``jepaflow.engine.build.build_objective``) on
the chosen device, and two things are timed: :func:`jepaflow.engine.checkpoint.nonfinite_weights` followed by the
one host sync the trainer makes (``int(...)``), and :func:`jepaflow.checkpoints.write_checkpoint` of the
objective's state dict to a temporary folder (the same atomic write as ``last.pt``, fsync included; the optimizer
state, about twice the weights, is left out, so the real write costs more). Printed as a markdown table.

    python benchmarks/finite_check.py --recipes recipes/fashion_mnist_ijepa.yaml recipes/ijepa_vitb.yaml
    python benchmarks/finite_check.py --device cuda --recipes recipes/ijepa_vith14.yaml
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from jepaflow.checkpoints import write_checkpoint
from jepaflow.config import load_recipe
from jepaflow.engine.build import build_objective
from jepaflow.engine.checkpoint import nonfinite_weights


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(recipe_path: str, device: torch.device, repeats: int) -> dict:
    recipe = load_recipe(recipe_path)
    torch.manual_seed(0)
    objective = build_objective(recipe).to(device)
    numel = sum(t.numel() for t in [*objective.parameters(), *objective.buffers()])
    int(nonfinite_weights(objective))  # warm-up
    checks = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        bad = int(nonfinite_weights(objective))  # the trainer's one sync per save
        checks.append(time.perf_counter() - t0)
    assert bad == 0
    writes = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(max(1, repeats // 5)):
            sync(device)
            t0 = time.perf_counter()
            write_checkpoint({"objective": objective.state_dict()}, Path(tmp) / "last.pt")
            writes.append(time.perf_counter() - t0)
    return {"recipe": Path(recipe_path).stem, "tensors (M values)": numel / 1e6,
            "check (ms)": 1000 * statistics.median(checks), "write (ms)": 1000 * statistics.median(writes)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", default=["recipes/fashion_mnist_ijepa.yaml", "recipes/ijepa_vitb.yaml"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = [measure(r, device, args.repeats) for r in args.recipes]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"device: {device} ({where}), torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| recipe | weights and buffers (M values) | finite check + sync (ms) | write of the weights (ms) |")
    print("| --- | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['recipe']} | {r['tensors (M values)']:.1f} | {r['check (ms)']:.1f} | {r['write (ms)']:.0f} |")


if __name__ == "__main__":
    main()
