#!/usr/bin/env python
"""Multi-block mask sampling time per batch: jepaflow's masker (both modes) against the official collator.

For every (batch size, image size / patch size) pair, the time to sample the masks of one batch with the I-JEPA
ImageNet settings (4 target blocks of scale 0.15-0.2 and aspect 0.75-1.5, one context block of scale 0.85-1.0
minus the targets; ``min_keep`` 10, or 4 on grids under 14 x 14 where 10 would exclude some target sizes):

* ``jepaflow official``: ``MultiBlockMasker(mode="official")``, the reference rules, vectorized over the batch;
* ``jepaflow fixed``: ``MultiBlockMasker(mode="fixed")``;
* ``official`` (with ``--reference PATH``): ``src.masks.multiblock.MaskCollator`` of a local checkout of
  facebookresearch/ijepa, called on a list of ``batch`` integers (its ``default_collate`` of them is negligible).

Samplers run in DataLoader workers, where torch uses one thread: this script sets one thread too (``--threads``).
Each time is the median of ``--repeats`` calls, the samplers called in turn (after one untimed call each);
``img/s`` is the batch over that time,
i.e. how many images one worker can mask per second, to compare with the training step's images/s.

    python benchmarks/masks.py --reference /tmp/ijepa
    python benchmarks/masks.py --batches 128 2048 --configs 224/14 224/16 32/4 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import command_line, emit, import_reference, machine_lines, table  # noqa: E402

from jepaflow.maskers.multiblock import MultiBlockMasker  # noqa: E402


def min_keep_for(side: int) -> int:
    return 10 if side >= 14 else 4


def time_interleaved(samplers: dict[str, Callable[[], object]], repeats: int, budget_s: float) -> dict[str, float]:
    """Median seconds per call of each sampler, called in turn (one call each per repeat, the order rotating) after
    one warm-up call each, so that a change of load on a shared machine falls on all of them; stops early after
    ``budget_s`` (at least 3 repeats)."""
    for fn in samplers.values():
        fn()
    names = list(samplers)
    times: dict[str, list[float]] = {n: [] for n in names}
    start = time.perf_counter()
    for r in range(repeats):
        if r >= 3 and time.perf_counter() - start > budget_s:
            break
        for name in names[r % len(names):] + names[: r % len(names)]:
            t0 = time.perf_counter()
            samplers[name]()
            times[name].append(time.perf_counter() - t0)
    return {n: statistics.median(t) for n, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, nargs="+", default=[128, 2048])
    p.add_argument("--configs", nargs="+", default=["224/14", "224/16", "32/4"], help="IMAGE/PATCH pairs")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--budget", type=float, default=30.0, help="seconds per configuration, after 3 repeats")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reference", metavar="PATH", help="checkout of facebookresearch/ijepa (the folder with src/)")
    p.add_argument("--out", help="also write the report to this file")
    p.add_argument("--append", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    collator_cls = None
    if args.reference:
        import_reference(args.reference)
        from src.masks.multiblock import MaskCollator as collator_cls

    rows = []
    for cfg in args.configs:
        img, patch = (int(v) for v in cfg.split("/"))
        side = img // patch
        keep = min_keep_for(side)
        for batch in args.batches:
            samplers: dict[str, Callable[[], object]] = {}
            for mode in ("official", "fixed"):
                masker = MultiBlockMasker(MultiBlockMasker.Config(mode=mode, min_keep=keep))
                masker.check((side, side))
                samplers[f"jepaflow {mode}"] = partial(masker, batch, (side, side), torch.Generator().manual_seed(0))
            if collator_cls is not None:
                collator = collator_cls(input_size=(img, img), patch_size=patch, enc_mask_scale=(0.85, 1.0),
                                        pred_mask_scale=(0.15, 0.2), aspect_ratio=(0.75, 1.5), nenc=1, npred=4,
                                        min_keep=keep, allow_overlap=False)
                samplers["official"] = partial(collator, list(range(batch)))
            times = time_interleaved(samplers, args.repeats, args.budget)
            for name, t in times.items():
                ratio = f"{times['official'] / t:.1f}x" if "official" in times else "-"
                rows.append([f"{img}/{patch} ({side}x{side})", str(batch), str(keep), name, t * 1000, batch / t,
                             ratio])
            print(f"  {cfg} batch {batch}: " + ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in times.items()),
                  file=sys.stderr, flush=True)
    head = ["image/patch (grid)", "batch", "min_keep", "sampler", "ms per batch", "img/s (one worker)",
            "speed-up over official"]
    text = "\n".join(["### Multi-block mask sampling", "", *machine_lines(command_line(argv)), "",
                      f"Median of up to {args.repeats} calls per sampler, called in turn, after one warm-up; "
                      f"{args.threads} torch thread(s).", "",
                      *table(head, rows, left=4), ""])
    emit(text, args.out, args.append)
    return 0


if __name__ == "__main__":
    sys.exit(main())
