"""The comparison's figures (PNG, matplotlib's Agg backend: no display needed).

* ``accuracy.png``: each probe's accuracy per method, the mean with its 95% interval as an error bar and each
  seed as a dot; floors as vertical lines (their interval shaded when they have one).
* ``accuracy_vs_compute.png``: accuracy against training FLOPs per run (log scale), one panel per probe.
* ``loss.png``: the training loss of every run against epochs, one panel per method (losses of different
  objectives are not on one scale).
* ``rankme.png``: RankMe (effective rank of the representation, from the training monitor) against epochs,
  every method on one axis: the mean over seeds, the band from the lowest to the highest seed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from jepaflow.compare.table import Comparison, Row, probe_title

#: probes drawn against compute (low-shot settings stay in accuracy.png)
COMPUTE_PROBES = ("linear", "knn", "attentive")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _colors(rows: list[Row]) -> dict[str, Any]:
    plt = _pyplot()
    cmap = plt.get_cmap("tab10")
    return {r.label: cmap(i % 10) for i, r in enumerate(rows)}


def _grid(n: int) -> tuple[int, int]:
    cols = min(n, 3)
    return math.ceil(n / cols), cols


def _wrap(label: str, width: int = 30) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(label, width)) or label


def accuracy_plot(cmp: Comparison, path: Path) -> Path | None:
    probes = cmp.probes
    if not probes or not cmp.methods:
        return None
    plt = _pyplot()
    rows_n, cols_n = _grid(len(probes))
    methods = cmp.methods
    height = 0.45 * len(methods) + 1.4
    fig, axes = plt.subplots(rows_n, cols_n, figsize=(2.2 + 3.6 * cols_n, height * rows_n + 0.8), squeeze=False,
                             sharey=True)
    colors = _colors(methods)
    floor_styles = ["--", ":", "-.", (0, (5, 1, 1, 1))]
    for ax, probe in zip(axes.flat, probes):
        for y, m in enumerate(methods):
            iv = m.intervals.get(probe)
            if iv is None:
                continue
            xerr = None if not iv.has_interval else [[iv.half_width * 100], [iv.half_width * 100]]
            ax.errorbar([iv.mean * 100], [y], xerr=xerr, fmt="o", color=colors[m.label], capsize=4, ms=6,
                        mec="black" if m.marks.get(probe) == "best" else colors[m.label])
            ax.scatter([v * 100 for v in m.values[probe]], [y] * len(m.values[probe]), s=10, color="black",
                       alpha=0.5, zorder=3)
        for i, floor in enumerate(cmp.floors):
            iv = floor.intervals.get(probe)
            if iv is None:
                continue
            style = floor_styles[i % len(floor_styles)]
            ax.axvline(iv.mean * 100, color="grey", ls=style, lw=1.2, label=floor.label)
            if iv.has_interval:
                ax.axvspan(iv.low * 100, iv.high * 100, color="grey", alpha=0.12)
        ax.set_yticks(range(len(methods)))
        ax.set_yticklabels([_wrap(m.label) for m in methods], fontsize=8)
        ax.set_ylim(len(methods) - 0.4, -0.6)
        ax.set_xlabel("test accuracy (%)", fontsize=8)
        ax.set_title(probe_title(probe), fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    for ax in list(axes.flat)[len(probes):]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, [_wrap(lb, 60) for lb in labels], loc="lower center", ncol=min(len(handles), 3),
                   fontsize=7, frameon=False)
    fig.suptitle("probe accuracy: mean and 95% interval over seeds (dots: seeds; lines: floors)", fontsize=10)
    fig.tight_layout(rect=(0, 0.08 if handles else 0, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def compute_plot(cmp: Comparison, path: Path) -> Path | None:
    probes = [p for p in cmp.probes if p in COMPUTE_PROBES]
    methods = [m for m in cmp.methods if m.train_flops]
    if not probes or not methods:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(probes), figsize=(5.0 * len(probes), 4.0), squeeze=False)
    colors = _colors(cmp.methods)
    for ax, probe in zip(axes.flat, probes):
        for m in methods:
            iv = m.intervals.get(probe)
            if iv is None:
                continue
            yerr = None if not iv.has_interval else [[iv.half_width * 100], [iv.half_width * 100]]
            ax.errorbar([m.train_flops], [iv.mean * 100], yerr=yerr, fmt="o", capsize=4, color=colors[m.label],
                        label=m.label)
        for floor in cmp.floors:
            iv = floor.intervals.get(probe)
            if iv is not None:
                ax.axhline(iv.mean * 100, color="grey", ls="--", lw=1)
                ax.annotate(floor.label, (0.01, iv.mean * 100), xycoords=("axes fraction", "data"), fontsize=7,
                            color="grey", va="bottom")
        ax.set_xscale("log")
        ax.set_xlabel("training FLOPs per run")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(probe_title(probe))
        ax.grid(alpha=0.3, which="both")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, [_wrap(lb, 50) for lb in labels], loc="lower center", ncol=min(len(handles), 3), fontsize=7,
               frameon=False)
    fig.suptitle("accuracy against training compute (mean and 95% interval over seeds)", fontsize=10)
    fig.tight_layout(rect=(0, 0.06 + 0.03 * math.ceil(len(handles) / 3), 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _series(run: Any, key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    spe = run.steps_per_epoch
    for rec in run.metrics:
        v, step = rec.get(key), rec.get("step")
        if isinstance(v, (int, float)) and math.isfinite(v) and isinstance(step, (int, float)):
            xs.append(step / spe if spe else step)
            ys.append(float(v))
    return xs, ys


def loss_plot(cmp: Comparison, path: Path) -> Path | None:
    methods = [m for m in cmp.methods if any(_series(r, "loss")[0] for r in m.runs)]
    if not methods:
        return None
    plt = _pyplot()
    rows_n, cols_n = _grid(len(methods))
    fig, axes = plt.subplots(rows_n, cols_n, figsize=(4.2 * cols_n, 3.0 * rows_n), squeeze=False)
    colors = _colors(cmp.methods)
    for ax, m in zip(axes.flat, methods):
        for run in m.runs:
            xs, ys = _series(run, "loss")
            ax.plot(xs, ys, color=colors[m.label], alpha=0.8, lw=1.2, label=f"seed {run.seed}")
        ax.set_title(m.label, fontsize=9)
        ax.set_xlabel("epoch" if m.runs[0].steps_per_epoch else "step")
        ax.set_ylabel("training loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(methods):]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def rankme_plot(cmp: Comparison, path: Path) -> Path | None:
    methods = [m for m in cmp.methods if any(_series(r, "rankme")[0] for r in m.runs)]
    if not methods:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    colors = _colors(cmp.methods)
    for m in methods:
        by_x: dict[float, list[float]] = {}
        for run in m.runs:
            for x, y in zip(*_series(run, "rankme")):
                by_x.setdefault(round(x, 6), []).append(y)
        xs = sorted(by_x)
        mean = [sum(by_x[x]) / len(by_x[x]) for x in xs]
        ax.plot(xs, mean, color=colors[m.label], lw=1.6, label=m.label, marker="o", ms=3)
        if len(m.runs) > 1:
            ax.fill_between(xs, [min(by_x[x]) for x in xs], [max(by_x[x]) for x in xs], color=colors[m.label],
                            alpha=0.15)
    ax.set_xlabel("epoch")
    ax.set_ylabel("RankMe (effective rank)")
    ax.set_title("RankMe of the representation during training (band: lowest to highest seed)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_plots(cmp: Comparison, out_dir: Path) -> list[Path]:
    """Every figure that has data, written into ``out_dir``; returns their paths."""
    made = []
    for fn, name in ((accuracy_plot, "accuracy.png"), (compute_plot, "accuracy_vs_compute.png"),
                     (loss_plot, "loss.png"), (rankme_plot, "rankme.png")):
        p = fn(cmp, out_dir / name)
        if p is not None:
            made.append(p)
    return made


__all__ = ["accuracy_plot", "compute_plot", "loss_plot", "rankme_plot", "write_plots"]
