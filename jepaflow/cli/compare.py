"""``jepaflow compare RUN_OR_SWEEP_DIR... [--output DIR] [--allow-mixed]``: runs side by side (logic in
:mod:`jepaflow.compare`). Cheap to import: nothing heavy is imported until the command runs."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer


def compare(
    paths: Annotated[list[Path], typer.Argument(metavar="RUN_OR_SWEEP_DIR...", help="run folders, sweep folders "
                                                "(searched recursively) or probe.json files", show_default=False)],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="folder for compare.md, compare.csv and "
                                                "the plots (default: DIR/compare for one folder, else ./compare)")
                      ] = None,
    allow_mixed: Annotated[bool, typer.Option("--allow-mixed", help="tabulate results measured with different "
                                              "data, splits or probe settings (flagged; no winner named)")] = False,
    flops: Annotated[bool, typer.Option("--flops/--no-flops", help="count training FLOPs (one step per method, "
                                        "cached in the output folder)")] = True,
    pixel_floor: Annotated[bool, typer.Option("--pixel-floor/--no-pixel-floor", help="compute the raw-pixel floor "
                                              "when no pixels probe.json is found (cached in the output folder)")
                           ] = True,
) -> None:
    """Compare runs side by side: probe accuracy as mean ± 95% interval over seeds, floors, compute.

    One row per method (runs grouped over seeds); writes compare.md, compare.csv and PNG plots.
    """
    from jepaflow.cli.main import _console, _user_errors

    err = _console(stderr=True)
    with _user_errors():
        from jepaflow.compare import compare as run_compare

        command = ["jepaflow", "compare", *map(str, paths)] + (["--output", str(output)] if output else []) + \
            (["--allow-mixed"] if allow_mixed else []) + ([] if flops else ["--no-flops"]) + \
            ([] if pixel_floor else ["--no-pixel-floor"])
        result = run_compare(paths, output, allow_mixed=allow_mixed, flops=flops, pixel_floor=pixel_floor,
                             command=shlex.join(command),
                             log=lambda m: err.print(f"jepaflow: {m}", soft_wrap=True, markup=False))
    from rich.markup import escape

    out = _console()
    out.print(summary_table(result.comparison))
    for probe, v in result.comparison.verdicts.items():
        if v is None:
            line = f"{probe}: not judged (mixed protocols)"
        elif v.best:
            line = f"{probe}: {v.best} is best ({v.reason})"
        else:
            line = f"{probe}: no winner ({v.reason})"
        out.print(escape(line), soft_wrap=True)
    out.print(escape("wrote " + ", ".join(str(f) for f in result.files)), soft_wrap=True)


def summary_table(cmp):
    """A rich table of the comparison's rows (the markdown table's main columns)."""
    from rich.markup import escape
    from rich.table import Table

    from jepaflow.compare.table import fmt_flops, fmt_interval, fmt_seconds, probe_title

    table = Table(title="jepaflow compare: test accuracy %, mean ± 95% CI half-width over seeds")
    for col in ("method", "n", "train time", "FLOPs", *(probe_title(p) for p in cmp.probes)):
        table.add_column(col, justify="left" if col == "method" else "right")
    for r in cmp.rows:
        label = r.label if r.kind == "method" else f"{r.label} (floor)"
        cells = [label, str(r.n), fmt_seconds(r.wall_clock_s), fmt_flops(r.train_flops)]
        cells += [fmt_interval(r.intervals.get(p), r.marks.get(p, "")).replace("**", "") for p in cmp.probes]
        table.add_row(*(escape(c) for c in cells))
    return table
