#!/usr/bin/env python
"""jepaflow's linear probe against scikit-learn's ``LogisticRegression``, on the same standardized features.

For every SOURCE (anything ``jepaflow probe`` accepts: ``pixels``, a run folder, a checkpoint, ...) and every
``--layers`` value, the frozen features are made by jepaflow's own probe code (the feature cache included, so a
second run does not run the encoder), standardized with the train split's statistics, and then:

1. jepaflow's linear probe protocol runs as ``jepaflow probe`` runs it (``C`` chosen on the seeded, stratified
   validation split carved from train, refit on all of train, test scored once);
2. at the chosen ``C`` (and at every ``--C`` given), the same problem is solved by jepaflow's solver
   (:func:`jepaflow.probes.linear.fit_logistic_regression`, L-BFGS) and by scikit-learn
   (``LogisticRegression(C=C, tol=1e-4, max_iter=10000)``, lbfgs, on the same float64 features), both on every
   train item, and both test accuracies, their difference in points and the objective value of each solution are
   printed;
3. for contrast, jepaflow's previous probe: 100 full-batch AdamW steps (lr 1e-2, weight decay 1e-4, zero init).

Both solvers minimize the same strictly convex objective, so a converged solver reaches the same minimum: the
accuracies should agree up to ties and the tolerance (the target is within 0.5 point).

Learned features need a checkpoint: give a run folder in ``--sources``, or ``--train-steps N`` to train the
``--train-recipe`` (default: the Fashion-MNIST I-JEPA recipe, one-epoch schedule) for N steps first, into
``--train-dir`` (reused when it already holds a checkpoint):

    python benchmarks/probe_vs_sklearn.py --data recipes/fashion_mnist_ijepa.yaml --sources pixels \
        --train-steps 150 --layers last last4 --out /tmp/probe_vs_sklearn.md
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_average, machine_lines  # noqa: E402


def features(source: str, data: str, layers: str, role: str | None, overrides: list[str]) -> tuple[Any, Any, dict[str, Any]]:
    """Train and test :class:`~jepaflow.probes.features.SplitFeatures` of ``source``, made (or read from the
    cache) by the probe's own code, and the source description."""
    from jepaflow.cli.probe import resolve_settings
    from jepaflow.probes.cache import FeatureCache, cache_root
    from jepaflow.probes.data import build_probe_data
    from jepaflow.probes.evaluate import load_or_extract
    from jepaflow.probes.sources import inspect_source, source_encoder

    src = inspect_source(source)
    section, cfg = resolve_settings(src, data, "linear", layers, role, overrides)
    encoder, desc = source_encoder(src, cfg.encoder, section, cfg.seed)
    from jepaflow.probes.cache import encoder_hash

    train, test, status, seconds = load_or_extract(
        encoder, build_probe_data(section), cfg, encoder_hash(encoder), torch.device("cpu"),
        FeatureCache(cache_root()), pooled=True, tokens=False, log=lambda m: print(f"  {m}", file=sys.stderr),
        role=desc.get("role"))
    desc.update({"cache": status, "extract_seconds": seconds, "cfg": cfg})
    return train, test, desc


def train_run(recipe: Path, steps: int, run_dir: Path) -> Path:
    """A short run of ``recipe`` (``steps`` optimizer steps on a one-epoch schedule, no end-of-run probe) in
    ``run_dir``; an existing checkpoint there is reused."""
    from jepaflow.config import load_recipe
    from jepaflow.engine.trainer import train

    if (run_dir / "checkpoints" / "last.pt").is_file():
        print(f"reusing the run in {run_dir}", file=sys.stderr)
        return run_dir
    overrides = [f"output_dir={run_dir}", "optim.epochs=1", "optim.warmup_epochs=0.1", f"train.max_steps={steps}",
                 "probe.enabled=false", "train.progress=false", "train.monitor_every=null"]
    print(f"training {recipe} for {steps} steps into {run_dir}", file=sys.stderr)
    t0 = time.perf_counter()
    train(load_recipe(recipe, overrides))
    print(f"trained in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return run_dir


def adamw_budget(x: torch.Tensor, y: torch.Tensor, num_classes: int, steps: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """jepaflow's previous linear probe: zero init, ``steps`` full-batch AdamW steps, lr 1e-2, wd 1e-4 on W."""
    w = torch.zeros(x.shape[1], num_classes, requires_grad=True)
    b = torch.zeros(num_classes, requires_grad=True)
    opt = torch.optim.AdamW([{"params": [w], "weight_decay": 1e-4}, {"params": [b], "weight_decay": 0.0}], lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(x @ w + b, y).backward()
        opt.step()
    return w.detach(), b.detach()


def compare(source: str, data: str, layers: str, role: str | None, extra_C: list[float],
            overrides: list[str]) -> list[dict[str, Any]]:
    from sklearn.linear_model import LogisticRegression

    from jepaflow.probes.evaluate import evaluate_features
    from jepaflow.probes.linear import accuracy, fit_logistic_regression, logistic_loss_and_grad, standardize

    print(f"{source} ({role or 'default encoder'}, {layers}): features", file=sys.stderr)
    train, test, desc = features(source, data, layers, role, overrides)
    cfg = desc["cfg"]
    num_classes = int(max(train.labels.max(), test.labels.max())) + 1
    n = len(train.labels)

    t0 = time.perf_counter()
    protocol = evaluate_features(train, test, cfg, num_classes)["probes"]["linear"]
    protocol_s = time.perf_counter() - t0
    chosen = float(protocol["hyperparameters"]["C"])

    x_tr, x_te = standardize(train.pooled, test.pooled)
    x_tr64, x_te64 = x_tr.double(), x_te.double()
    y_tr, y_te = train.labels, test.labels
    name = f"{desc['kind']} {Path(source).name if desc['kind'] != 'pixels' else ''}".strip()
    what = f"{name}, {desc.get('role') or '-'}, {layers} ({x_tr.shape[1]} dims)"
    rows = []
    for C in dict.fromkeys([chosen, *extra_C]):
        print(f"  C={C:g}: jepaflow L-BFGS", file=sys.stderr)
        t0 = time.perf_counter()
        ours = fit_logistic_regression(x_tr, y_tr, num_classes, C, cfg.linear_max_iter, cfg.linear_tol)
        ours_s = time.perf_counter() - t0
        print(f"  C={C:g}: scikit-learn", file=sys.stderr)
        t0 = time.perf_counter()
        ref = LogisticRegression(C=C, tol=1e-4, max_iter=10000).fit(x_tr64.numpy(), y_tr.numpy())
        ref_s = time.perf_counter() - t0
        w = torch.from_numpy(ref.coef_.T.copy())
        b = torch.from_numpy(ref.intercept_.copy())
        ref_loss = float(logistic_loss_and_grad(x_tr64, y_tr, w, b, 1.0 / (C * n))[0])
        acc_ours = accuracy(ours.predict(x_te), y_te)
        acc_ref = float((ref.predict(x_te64.numpy()) == y_te.numpy()).mean())
        rows.append({
            "features": what, "C": f"{C:g}" + (" (chosen)" if C == chosen else ""),
            "jepaflow": acc_ours, "sklearn": acc_ref, "diff": 100 * (acc_ours - acc_ref),
            "loss_ours": ours.loss, "loss_ref": ref_loss, "iters": f"{ours.iterations} / {int(np.max(ref.n_iter_))}",
            "converged": ours.converged, "seconds": f"{ours_s:.0f} / {ref_s:.0f}",
        })
    w, b = adamw_budget(x_tr, y_tr, num_classes)
    budget = accuracy((x_te @ w + b).argmax(1), y_te)
    rows[0]["protocol"] = protocol["accuracy"]
    rows[0]["protocol_val"] = protocol["val_accuracy"]
    rows[0]["protocol_s"] = protocol_s
    rows[0]["adamw100"] = budget
    return rows


def table(rows: list[dict[str, Any]]) -> list[str]:
    out = [
        "| features (source, encoder, layers) | C | jepaflow | scikit-learn | difference (points) | objective jepaflow "
        "/ scikit-learn | iterations jepaflow / scikit-learn | seconds jepaflow / scikit-learn | probe protocol "
        "(val) | 100 AdamW steps |",
        "| --- | --- | ---: | ---: | ---: | --- | --- | --- | --- | ---: |",
    ]
    for r in rows:
        proto = (f"{100 * r['protocol']:.2f} ({100 * r['protocol_val']:.2f})" if "protocol" in r else "")
        adam = f"{100 * r['adamw100']:.2f}" if "adamw100" in r else ""
        out.append(
            f"| {r['features']} | {r['C']} | {100 * r['jepaflow']:.2f} | {100 * r['sklearn']:.2f} | "
            f"{r['diff']:+.2f} | {r['loss_ours']:.6f} / {r['loss_ref']:.6f} | {r['iters']} | {r['seconds']} | "
            f"{proto} | {adam} |"
        )
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="recipe or data-section YAML (as jepaflow probe --data)")
    p.add_argument("--sources", nargs="+", default=[], help="pixels, run folders, checkpoints, ...")
    p.add_argument("--train-steps", type=int, default=None,
                   help="train --train-recipe for this many steps first and compare its features too")
    p.add_argument("--train-recipe", type=Path, default=REPO_ROOT / "recipes" / "fashion_mnist_ijepa.yaml")
    p.add_argument("--train-dir", type=Path, default=None,
                   help="run folder of --train-steps (default: /tmp/jepaflow-probe-vs-sklearn/<recipe>-<steps>)")
    p.add_argument("--layers", nargs="+", default=["last"], choices=["last", "last4"])
    p.add_argument("--encoders", nargs="+", default=[None], metavar="ROLE",
                   help="encoder roles of run/checkpoint sources (default: the representation encoder)")
    p.add_argument("--C", nargs="*", type=float, default=[1.0], help="more C values compared besides the chosen one")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="probe.X=V",
                   help="probe/data overrides, as jepaflow probe --set")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=None, help="also write the report here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    command = "python benchmarks/probe_vs_sklearn.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    import sklearn

    head = machine_lines(command, software=f"scikit-learn {sklearn.__version__}, ")
    sources = list(args.sources)
    if args.train_steps:
        run_dir = args.train_dir or Path("/tmp/jepaflow-probe-vs-sklearn") / f"{args.train_recipe.stem}-{args.train_steps}"
        sources.append(str(train_run(args.train_recipe, args.train_steps, run_dir)))
    if not sources:
        raise SystemExit("give --sources and/or --train-steps")
    rows: list[dict[str, Any]] = []
    for source in sources:
        single = source == "pixels" or source.startswith("timm:")
        for role in [None] if single else args.encoders:
            for layers in ["last"] if source == "pixels" else args.layers:
                rows += compare(source, args.data, layers, role, args.C, args.overrides)
    report = "\n".join(["## Linear probe vs scikit-learn", "", *head,
                        f"- load average at end: {load_average()}", "", *table(rows), ""])
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
