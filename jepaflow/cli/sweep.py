"""``jepaflow sweep RECIPE... --seeds N --output DIR``: recipes x seeds, one run after another, resumable (logic
in :mod:`jepaflow.sweep`). Cheap to import: nothing heavy is imported until the command runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def sweep(
    recipes: Annotated[list[Path], typer.Argument(metavar="RECIPE...", help="recipe files", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="sweep folder: run i goes to "
                                         "OUTPUT/<recipe stem>/seed<k>", show_default=False)],
    seeds: Annotated[int, typer.Option("--seeds", min=1, max=10_000, help="seeds per recipe")] = 3,
    first_seed: Annotated[int, typer.Option("--first-seed", min=0, help="the seeds are first-seed, first-seed+1, ...")] = 0,
    overrides: Annotated[list[str] | None, typer.Option(
        "--set", "-s", metavar="PATH=VALUE", help="override a field of every recipe (VALUE is YAML); may repeat",
        show_default=False)] = None,
    index: Annotated[list[int] | None, typer.Option(
        "--index", min=0, help="run only run number INDEX of the matrix (0-based, recipes outer, seeds inner; "
        "see --dry-run), e.g. $SLURM_ARRAY_TASK_ID; may repeat", show_default=False)] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the matrix and each run's state; run nothing")] = False,
) -> None:
    """Train every recipe with every seed, one after another (finished runs skipped, stopped ones resumed).

    Each run goes to OUTPUT/<recipe stem>/seed<k>; OUTPUT/sweep.json lists them. Then: jepaflow compare OUTPUT.
    """
    from jepaflow.cli.main import _console, _user_errors

    with _user_errors():
        from jepaflow.sweep import SweepError, plan, run_sweep

        seed_list = list(range(first_seed, first_seed + seeds))
        runs = plan(recipes, seed_list, overrides or [], output)
        if index:
            bad = [i for i in index if i >= len(runs)]
            if bad:
                raise SweepError(f"--index {bad[0]} is out of range: the matrix has {len(runs)} runs (0 to "
                                 f"{len(runs) - 1})", "see the numbering with --dry-run")
    out = _console()
    if dry_run:
        from rich.table import Table

        table = Table(title=f"sweep {output}: {len(runs)} runs")
        for col in ("index", "run", "state", "folder"):
            table.add_column(col)
        for r in runs:
            if not index or r.index in index:
                table.add_row(str(r.index), r.name, r.state, str(r.run_dir))
        out.print(table)
        return
    command = ["jepaflow", "sweep", *map(str, recipes), "--seeds", str(seeds), "--first-seed", str(first_seed),
               "--output", str(output)]
    for o in overrides or []:
        command += ["--set", o]
    for i in index or []:
        command += ["--index", str(i)]
    code = run_sweep(runs, Path(output), seed_list, overrides or [], command=command, only=index, console=out)
    if code:
        raise typer.Exit(code)
