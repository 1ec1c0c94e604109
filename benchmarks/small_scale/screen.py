#!/usr/bin/env python
"""Screen recipe settings: train each variant of a base recipe, then probe it cheaply; one table at the end.

Used for issue 8 (an I-JEPA recipe that works at small scale); every result goes to
``docs/results/small_scale_ijepa.md``. A *plan* (YAML) names a base recipe and variants, each a list of
``--set`` overrides::

    base: recipes/fashion_mnist_ijepa.yaml
    common: [optim.epochs=4]                 # applied to every variant, before its own overrides
    variants:
      baseline: []
      lr_1e-3: [optim.lr=1.0e-3]

    python benchmarks/small_scale/screen.py PLAN.yaml --output runs/screen --parallel 1
    python benchmarks/small_scale/screen.py PLAN.yaml --output runs/screen --parallel 8 --device cuda \\
        --set train.precision=fp32

Each variant is trained by ``python -m jepaflow.cli.main run`` in its own process (``--parallel`` of them at a
time: one on a 2-core CPU, several on a GPU, which tiny models leave mostly idle), its end-of-run probe turned
off. A finished variant (``summary.json`` present) is not trained again, so a plan can be extended and rerun.

The screening probe (:func:`screen_probe`) is deliberately simple, and the same for every variant:

* features: mean-pooled tokens of the *target* and of the *context* encoder, from the last block (after the
  final norm) and from the last 4 blocks (each through the final norm, then concatenated);
* linear: multinomial logistic regression on standardized features, solved to convergence with L-BFGS, its L2
  penalty chosen on a stratified 10% validation split of the train split, then refit on the whole train split;
* kNN: k = 20, cosine, temperature 0.07 (jepaflow's kNN probe);
* RankMe (Garrido et al. 2023) of the target encoder's last-layer features on the test split.

It screens; the shared probes (``jepaflow probe``) give the numbers reported as results.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml

REPO = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------------------------------- probing
def rankme(feats: torch.Tensor, eps: float = 1e-7) -> float:
    """RankMe (Garrido et al., ICML 2023): exp of the entropy of the normalized singular values of ``(N, D)``."""
    s = torch.linalg.svdvals(feats.double())
    p = s / s.sum() + eps
    return float(torch.exp(-(p * p.log()).sum()))


def standardize(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    mean, std = train.mean(0), train.std(0).clamp_min(1e-6)
    return [(x - mean) / std for x in (train, *others)]


def fit_logreg(x: torch.Tensor, y: torch.Tensor, classes: int, l2: float, max_iter: int = 500) -> torch.Tensor:
    """``(D + 1, C)`` weights (bias last) minimizing mean cross-entropy + ``l2/2 * ||W||^2`` with L-BFGS."""
    xb = torch.cat([x, torch.ones(len(x), 1, device=x.device)], 1)
    w = torch.zeros(xb.shape[1], classes, device=x.device, requires_grad=True)
    opt = torch.optim.LBFGS([w], lr=1, max_iter=max_iter, tolerance_grad=1e-6, tolerance_change=1e-10,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(xb @ w, y) + 0.5 * l2 * w[:-1].square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach()


def logreg_accuracy(xtr, ytr, xte, yte, classes: int, grid=(1e-5, 1e-4, 1e-3, 1e-2), seed: int = 0) -> dict:
    """Penalty chosen on a stratified 10% validation split of the train split; refit on all of it."""
    g = torch.Generator().manual_seed(seed)
    val = torch.zeros(len(ytr), dtype=torch.bool)
    ycpu = ytr.cpu()
    for c in range(classes):  # stratified: 10% of each class
        idx = (ycpu == c).nonzero().flatten()
        val[idx[torch.randperm(len(idx), generator=g)[: len(idx) // 10]]] = True
    val = val.to(xtr.device)
    a, b = standardize(xtr[~val], xtr[val])
    scores = {}
    for l2 in grid if len(grid) > 1 else []:  # a single value needs no validation fit
        w = fit_logreg(a, ytr[~val], classes, l2)
        bb = torch.cat([b, torch.ones(len(b), 1, device=b.device)], 1)
        scores[l2] = float(((bb @ w).argmax(1) == ytr[val]).float().mean())
    best = max(scores, key=lambda k: (scores[k], k)) if scores else grid[0]  # ties: the stronger penalty
    tr, te = standardize(xtr, xte)
    w = fit_logreg(tr, ytr, classes, best)
    te1 = torch.cat([te, torch.ones(len(te), 1, device=te.device)], 1)
    return {"acc": float(((te1 @ w).argmax(1) == yte).float().mean()), "l2": best, "val": scores.get(best)}


@torch.no_grad()
def encoder_features(encoder, images: torch.Tensor, batch: int = 1000) -> dict[str, torch.Tensor]:
    """Mean-pooled last-block (final-norm) and last-4-blocks features ``(N, D)`` / ``(N, 4D)``."""
    last, last4 = [], []
    for i in range(0, len(images), batch):
        x = images[i : i + batch]
        outs = encoder.forward_layers(x, min(4, len(encoder.blocks)))
        normed = [encoder.norm(o) for o in outs]
        last.append(normed[-1].mean(1))
        last4.append(torch.cat([o.mean(1) for o in normed], 1))
    return {"last": torch.cat(last), "last4": torch.cat(last4)}


def load_split(recipe_dict: dict, split: str, device) -> tuple[torch.Tensor, torch.Tensor]:
    from jepaflow.config import load_recipe
    from jepaflow.engine.build import build_dataset

    r = load_recipe(recipe_dict)
    ds = build_dataset(r, split, augment=False)
    loader = torch.utils.data.DataLoader(ds, batch_size=2000, shuffle=False)
    xs, ys = zip(*loader)
    return torch.cat(xs).to(device), torch.cat([torch.as_tensor(y) for y in ys]).to(device)


def screen_probe(run_dir: Path, device: str, data_cache: dict, roles=("target", "context"),
                 grid=(1e-4, 1e-3, 1e-2), layer_sets=("last", "last4"), linear_train: int | None = None,
                 train_items: int | None = None) -> dict[str, Any]:
    import jepaflow
    from jepaflow.probes.knn import knn_accuracy

    recipe = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    key = json.dumps(recipe["data"], sort_keys=True)
    if key not in data_cache:
        data_cache[key] = (load_split(recipe, "train", device), load_split(recipe, "test", device))
    (xtr, ytr), (xte, yte) = data_cache[key]
    if train_items is not None and train_items < len(ytr):  # an evenly spaced subset for every probe
        keep = torch.linspace(0, len(ytr) - 1, train_items).long().to(ytr.device)
        xtr, ytr = xtr[keep], ytr[keep]
    classes = int(ytr.max()) + 1
    out: dict[str, Any] = {}
    for role in roles:
        enc = jepaflow.load_encoder(run_dir, which=role, map_location=device)
        ftr, fte = encoder_features(enc, xtr), encoder_features(enc, xte)
        sub = slice(None)
        if linear_train is not None and linear_train < len(ytr):  # an evenly spaced subset (classes are mixed)
            sub = torch.linspace(0, len(ytr) - 1, linear_train).long().to(ytr.device)
        for layers in layer_sets:
            out[f"{role}_{layers}_linear"] = logreg_accuracy(ftr[layers][sub], ytr[sub], fte[layers], yte, classes,
                                                             grid)
        for layers in layer_sets:
            key = f"{role}_last_knn" if layers == "last" else f"{role}_{layers}_knn"
            out[key] = knn_accuracy(ftr[layers], ytr, fte[layers], yte, k=20, temperature=0.07, num_classes=classes)
        out[f"{role}_last_rankme"] = rankme(fte["last"])
    return out


# ----------------------------------------------------------------------------------------------------- driver
def run_variant(name: str, plan: dict, args, out_dir: Path) -> None:
    """Child process: train one variant (unless already trained), then screen-probe it into screen.json."""
    run = out_dir / name
    res_file = run / "screen.json"
    if res_file.exists() and not args.reprobe:
        return
    overrides = list(plan.get("common", [])) + list(plan["variants"][name] or []) + list(args.set)
    overrides += ["probe.enabled=false", "train.progress=false"]
    if args.device != "auto":
        overrides.append(f"train.device={args.device}")
    t0 = time.time()
    trained = (run / "summary.json").exists()
    if not trained:
        cmd = [sys.executable, "-m", "jepaflow.cli.main", "run", str(plan["base"]), "--output", str(run)]
        for o in overrides:
            cmd += ["--set", o]
        print(" ".join(cmd), flush=True)
        rc = subprocess.call(cmd, cwd=REPO)
        if rc != 0:
            raise SystemExit(f"training {name} failed with exit code {rc}")
    t1 = time.time()
    device = "cuda" if args.device == "cuda" else "cpu"
    res = screen_probe(run, device, {}, roles=args.roles, grid=tuple(args.grid), layer_sets=tuple(args.layers),
                       linear_train=args.linear_train, train_items=args.train_items)
    summary = json.loads((run / "summary.json").read_text())
    minutes = round((t1 - t0) / 60, 2)
    if trained and res_file.exists():  # a probe again: the training time is the first probe's record
        minutes = json.loads(res_file.read_text()).get("train_minutes", minutes)
    res.update(train_minutes=minutes, probe_seconds=round(time.time() - t1, 1),
               last=summary.get("last", {}), overrides=overrides)
    res_file.write_text(json.dumps(res, indent=2))


def step_flops(plan: dict, name: str, extra: list[str], batch: int = 32) -> float:
    """Training FLOPs per image of a variant (one forward + backward of the objective on random images of the
    recipe's size, masks from its masker, counted by ``torch.utils.flop_counter``): the screening cost model."""
    from torch.utils.flop_counter import FlopCounterMode

    from jepaflow.config import load_recipe
    from jepaflow.engine.build import build_masker, build_objective
    from jepaflow.interfaces import Batch

    overrides = list(plan.get("common", [])) + list(plan["variants"][name] or []) + extra
    r = load_recipe(plan["base"], overrides=overrides)
    obj = build_objective(r)
    data = r.components["data"].config
    images = torch.randn(batch, data.channels, data.image_size, data.image_size)
    masker = build_masker(r)
    masks = masker(batch, obj.representation_encoder().grid_size, torch.Generator().manual_seed(0)) if masker else None
    with FlopCounterMode(display=False) as fc:
        obj(Batch(images=images, masks=masks)).loss.backward()
    return fc.get_total_flops() / batch


def table(names: list[str], out_dir: Path, roles: list[str]) -> str:
    cols = [f"{r}_{layers}_linear" for r in roles for layers in ("last", "last4")]
    cols += [f"{r}_last_knn" for r in roles] + [f"{r}_last4_knn" for r in roles] + ["target_last_rankme" if "target" in roles else f"{roles[0]}_last_rankme"]
    head = "| variant | " + " | ".join(c.replace("_", " ") for c in cols) + " | loss | train RankMe | train min |"
    lines = [head, "|" + "---|" * (len(cols) + 4)]
    for n in names:
        f = out_dir / n / "screen.json"
        if not f.exists():
            lines.append(f"| {n} | failed or not run |" + " |" * (len(cols) + 1))
            continue
        res = json.loads(f.read_text())
        cells = []
        for c in cols:
            v = res.get(c)
            if v is None:
                cells.append("")
            elif isinstance(v, dict):
                cells.append(f"{v['acc'] * 100:.1f}")
            else:
                cells.append(f"{v:.1f}" if c.endswith("rankme") else f"{v * 100:.1f}")
        last = res.get("last", {})
        loss = last.get("pred_loss", last.get("loss", math.nan))
        lines.append(f"| {n} | " + " | ".join(cells) + f" | {loss:.4f} | {last.get('rankme', math.nan):.1f} | "
                     f"{res.get('train_minutes', math.nan)} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("plan")
    p.add_argument("--output", required=True)
    p.add_argument("--parallel", type=int, default=1)
    p.add_argument("--device", default="auto", help="train.device for the runs (and the probe's device)")
    p.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of each variant's process")
    p.add_argument("--set", action="append", default=[], help="extra override for every variant")
    p.add_argument("--only", nargs="*", default=None, help="variants to run (default: all)")
    p.add_argument("--deadline", type=float, default=None, help="seconds after which no new variant starts")
    p.add_argument("--roles", nargs="+", default=["target", "context"], help="encoders to probe")
    p.add_argument("--grid", nargs="+", type=float, default=[1e-4, 1e-3, 1e-2], help="L2 penalties tried")
    p.add_argument("--layers", nargs="+", default=["last", "last4"], help="feature sets for the linear probe")
    p.add_argument("--linear-train", type=int, default=None, help="train items for the linear probe (default all)")
    p.add_argument("--train-items", type=int, default=None,
                   help="train items every probe uses (kNN included; evenly spaced; default all)")
    p.add_argument("--reprobe", action="store_true", help="probe trained variants again (screen.json replaced)")
    p.add_argument("--flops", action="store_true", help="only print each variant's training MFLOPs per image")
    p.add_argument("--table-only", action="store_true", help="only print the table of what is already probed")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()

    plan = yaml.safe_load(Path(args.plan).read_text())
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.child is not None:
        run_variant(args.child, plan, args, out_dir)
        return
    names = [n for n in plan["variants"] if args.only is None or n in args.only]
    if args.table_only:
        print(table(names, out_dir, args.roles))
        return
    if args.flops:
        for n in names:
            print(f"{n}: {step_flops(plan, n, list(args.set)) / 1e6:.1f} MFLOPs/img", flush=True)
        return
    t_start = time.time()
    todo = [n for n in names if args.reprobe or not (out_dir / n / "screen.json").exists()]
    running: dict[str, subprocess.Popen] = {}
    child_args = [a for a in sys.argv[1:]]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads)) if args.threads else None
    while todo or running:
        late = args.deadline is not None and time.time() - t_start >= args.deadline
        while todo and len(running) < args.parallel and not late:
            n = todo.pop(0)
            log = open(out_dir / f"{n}.log", "w")
            running[n] = subprocess.Popen([sys.executable, __file__, *child_args, "--child", n], stdout=log,
                                          stderr=subprocess.STDOUT, env=env, cwd=REPO)
            print(f"[{time.time() - t_start:6.0f}s] start {n}", flush=True)
        if late and todo:
            print(f"deadline: not starting {todo}", flush=True)
            todo.clear()
        for n, proc in list(running.items()):
            if proc.poll() is not None:
                print(f"[{time.time() - t_start:6.0f}s] done {n} rc={proc.returncode}", flush=True)
                del running[n]
        time.sleep(1)
    text = table(names, out_dir, args.roles)
    (out_dir / "table.md").write_text(text + "\n")
    print(text, flush=True)


if __name__ == "__main__":
    main()
