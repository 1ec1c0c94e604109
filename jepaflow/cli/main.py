"""The ``jepaflow`` command line.

Commands::

    jepaflow run RECIPE [--set PATH=VALUE]... [--output DIR] [--resume]
    jepaflow validate RECIPE [--set PATH=VALUE]...
    jepaflow masks RECIPE --output masks.png [--batch-size N] [--batches N] [--set PATH=VALUE]...
    jepaflow probe SOURCE [--data RECIPE] [--probe linear,knn,attentive,lowshot] [--layers last|last4] [--set ...]
    jepaflow plugins list
    jepaflow plugins show NAME [--kind KIND]
    jepaflow export RUN_OR_CHECKPOINT --output DIR [--which ROLE] [--timm/--no-timm]
    jepaflow sweep RECIPE... --seeds N --output DIR [--set PATH=VALUE]... [--index I] [--dry-run]
    jepaflow compare RUN_OR_SWEEP_DIR... [--output DIR] [--allow-mixed]
    jepaflow --version

Every user error is a :class:`jepaflow.errors.JepaflowError`: it is printed as "error: <problem>" and
"fix: <what to do>" on stderr, without a traceback, and the process exits with the error's ``exit_code``
(2 for user errors, like a command-line usage error). Anything else escaping a command is a bug and keeps its
traceback.

Importing this module is cheap (typer and rich only): torch, the engine and the plugins are imported inside the
commands that need them, so that ``jepaflow --help`` and ``jepaflow plugins list``'s discovery stay fast.
"""

from __future__ import annotations

import errno
import inspect
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from jepaflow import __version__
from jepaflow.cli.compare import compare as compare_command
from jepaflow.cli.export import export as export_command
from jepaflow.cli.sweep import sweep as sweep_command
from jepaflow.errors import JepaflowError, PluginError, clip

if TYPE_CHECKING:
    from rich.console import Console

    from jepaflow.config import Recipe
    from jepaflow.registry import PluginInfo

app = typer.Typer(
    name="jepaflow",
    help="Modular self-supervised learning for images (I-JEPA is the reference recipe).",
    no_args_is_help=True,
    add_completion=False,
    # Tracebacks are for bugs; user errors are caught in each command and printed plainly.
    pretty_exceptions_show_locals=False,
)
plugins_app = typer.Typer(help="Installed plugins (entry points), their status and their settings.", no_args_is_help=True)
app.add_typer(plugins_app, name="plugins")
app.command("export")(export_command)
app.command("sweep")(sweep_command)
app.command("compare")(compare_command)


# ------------------------------------------------------------------------------------------------ output helpers
def _console(stderr: bool = False) -> Console:
    """A rich console; when the stream is not a terminal (pipes, CI logs, tests) it is made wide, so that
    table cells and messages are not wrapped or cut at 80 columns. ``COLUMNS`` still wins when set."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    width = None
    if "COLUMNS" not in os.environ and not (hasattr(stream, "isatty") and stream.isatty()):
        width = 200
    return Console(stderr=stderr, width=width, highlight=False)


def _print_error(exc: JepaflowError) -> None:
    from rich.markup import escape

    err = _console(stderr=True)
    problem = exc.problem if isinstance(exc.problem, str) else str(exc)
    # every message is bounded, whatever it echoes (messages cap their values; this is the last guard)
    err.print(f"[bold red]error:[/] {escape(clip(problem, 6000))}", soft_wrap=True)
    if exc.fix:
        err.print(f"  [yellow]fix:[/] {escape(clip(str(exc.fix), 1000))}", soft_wrap=True)


#: errno values of a file system refusing a read or write: the environment, not a bug, so a message
_STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EACCES, errno.EPERM,
                             errno.ENAMETOOLONG, errno.EMFILE, errno.ENFILE, errno.EFBIG, errno.ESTALE})


@contextmanager
def _user_errors() -> Iterator[None]:
    """Turn a :class:`JepaflowError` into a message on stderr and its exit code (no traceback); so too a file
    system refusing a write mid-run (a full disk while writing metrics, a read-only remount)."""
    try:
        yield
    except JepaflowError as exc:
        _print_error(exc)
        raise typer.Exit(exc.exit_code) from None
    except OSError as exc:
        if exc.errno not in _STORAGE_ERRNOS:
            raise
        where = f" {clip(str(exc.filename), 300)}" if exc.filename else ""
        _print_error(JepaflowError(f"the file system refused to read or write{where}: {exc.strerror or exc}",
                                   "free space or fix the permissions (checkpoints are written atomically: the "
                                   "last one is intact), then continue with --resume"))
        raise typer.Exit(2) from None


def _fmt_count(n: int) -> str:
    return f"{n:,}"


def _fmt_value(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, int):
        return _fmt_count(v) if abs(v) >= 10_000 else str(v)
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _scalar(v: Any) -> Any | None:
    """``v`` as a plain Python scalar when it is one (a number, or a one-element tensor), else None."""
    if isinstance(v, (bool, int, float, str)):
        return v
    numel = getattr(v, "numel", None)
    if callable(numel) and numel() == 1:
        return v.item()  # CLI reporting, not a hot path
    return None


def _load(recipe_path: Path, overrides: list[str] | None) -> Recipe:
    from jepaflow.config import load_recipe

    return load_recipe(recipe_path, overrides=overrides or [])


# ------------------------------------------------------------------------------------------------ options
RecipeArg = Annotated[Path, typer.Argument(help="recipe YAML file", show_default=False)]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        "-s",
        metavar="PATH=VALUE",
        help="override a recipe field, e.g. --set optim.lr=0.001 (VALUE is parsed as YAML); may repeat",
        show_default=False,
    ),
]


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"jepaflow {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version_callback, is_eager=True, help="print the version and exit"),
    ] = False,
) -> None:
    """Modular self-supervised learning for images (I-JEPA is the reference recipe)."""


# ------------------------------------------------------------------------------------------------ run
@app.command()
def run(
    recipe: RecipeArg,
    overrides: SetOpt = None,
    output: Annotated[
        str | None, typer.Option("--output", "-o", help="run folder (default: the recipe's output_dir)")
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue from the run folder's last checkpoint")] = False,
) -> None:
    """Train a recipe."""
    with _user_errors():
        if output is not None:
            from jepaflow.outputs import check_output_dir

            check_output_dir(output, "--output run folder")
        r = _load(recipe, overrides)
        from jepaflow.engine.trainer import train

        summary = train(r, output_dir=output, resume=resume)
    _print_summary(summary)
    if summary.get("exit_code"):  # stopped by SIGTERM/SIGINT after a checkpoint: tell the scheduler
        raise typer.Exit(summary["exit_code"])


def _print_summary(summary: Any) -> None:
    if not isinstance(summary, dict) or not summary:
        return
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="run summary", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    for key, value in _flatten(summary):
        s = _scalar(value)
        if s is not None or isinstance(value, (str, Path)) or value is None:
            table.add_row(escape(key), escape(_fmt_value(s if s is not None else value)))
    _console().print(table)


def _flatten(d: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``{"last": {"loss": 0.4}}`` -> ``("last.loss", 0.4)``."""
    for key, value in d.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


# ------------------------------------------------------------------------------------------------ validate
@app.command()
def validate(recipe: RecipeArg, overrides: SetOpt = None) -> None:
    """Check a recipe: print it resolved (defaults filled in) and the parameter count of its model.

    The model is built on the ``meta`` device, so even ViT-H/G cost no memory and no time.
    """
    with _user_errors():
        r = _load(recipe, overrides)
        import torch

        from jepaflow.engine.build import build_encoder, build_masker, build_objective, build_target_updater

        try:
            with torch.device("meta"):
                objective = build_objective(r)
                encoder = build_encoder(r) if "encoder" in r.components else None
        except (NotImplementedError, RuntimeError, PluginError) as exc:
            # A plugin whose constructor reads tensor values (e.g. `.item()`) cannot be built on `meta`:
            # count on the CPU instead, slower but exact.
            _console(stderr=True).print(f"note: meta-device build failed ({type(exc).__name__}); building on CPU")
            objective = build_objective(r)
            encoder = build_encoder(r) if "encoder" in r.components else None
        build_target_updater(r)
        masker = build_masker(r)
        if masker is not None and encoder is not None:
            _check_masker(r, masker, tuple(encoder.grid_size))

    out = _console()
    typer.echo("# resolved recipe (defaults filled in)")
    typer.echo(r.to_yaml().rstrip("\n"))
    typer.echo("")
    out.print(_components_table(r))
    out.print(_parameter_table(objective))
    total = _count(objective.parameters())
    out.print(
        f"[green]ok[/]: total parameters {_fmt_count(total[0] + total[1])} "
        f"(trainable {_fmt_count(total[0])}, frozen {_fmt_count(total[1])})"
    )


def _check_masker(r: Recipe, masker: Any, grid: tuple[int, int], batch_size: int = 4) -> Any:
    """``jepaflow.testing.check_masker`` on the encoder's grid: ``Masker.check``, then one sample batch checked
    against the masker contract (index range, dtypes, shapes, empty contexts, overlap). A masker whose settings do
    not fit the grid, or whose output breaks the contract, is named before any run starts."""
    import torch

    from jepaflow.testing import check_masker

    gen = torch.Generator().manual_seed(r.seed)
    return check_masker(masker, grid, batch_size, gen, name=r.components["masker"].name)


def _count(params: Iterator[Any]) -> tuple[int, int]:
    trainable = frozen = 0
    for p in params:
        if p.requires_grad:
            trainable += p.numel()
        else:
            frozen += p.numel()
    return trainable, frozen


def _components_table(r: Recipe) -> Any:
    from rich.markup import escape
    from rich.table import Table

    from jepaflow.registry import default_registry

    reg = default_registry()
    table = Table(title="components")
    for col in ("section", "plugin", "class", "package"):
        table.add_column(col)
    for section, comp in r.components.items():
        info = reg.info(comp.kind, comp.name)
        table.add_row(*(escape(c) for c in (section, comp.name, comp.cls.__name__, f"{info.package} {info.version}")))
    return table


def _parameter_table(objective: Any) -> Any:
    """One row per top-level child module of the objective (e.g. context encoder, target encoder,
    predictor), plus parameters held by the objective itself, plus the total (shared tensors counted once)."""
    from rich.table import Table

    table = Table(title=f"parameters of {type(objective).__name__}")
    table.add_column("module")
    table.add_column("class")
    for col in ("trainable", "frozen", "total"):
        table.add_column(col, justify="right")
    for name, child in objective.named_children():
        t, f = _count(child.parameters())
        table.add_row(name, type(child).__name__, _fmt_count(t), _fmt_count(f), _fmt_count(t + f))
    t, f = _count(objective.parameters(recurse=False))
    if t + f:
        table.add_row("(own)", type(objective).__name__, _fmt_count(t), _fmt_count(f), _fmt_count(t + f))
    t, f = _count(objective.parameters())
    table.add_section()
    table.add_row("total", "", _fmt_count(t), _fmt_count(f), _fmt_count(t + f), style="bold")
    return table


# ------------------------------------------------------------------------------------------------ masks
@app.command()
def masks(
    recipe: RecipeArg,
    output: Annotated[str, typer.Option("--output", "-o", help="PNG to write (images with their masks)")] = "masks.png",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="masks per batch")] = 64,
    batches: Annotated[int, typer.Option("--batches", min=1, help="batches sampled for the statistics")] = 4,
    max_images: Annotated[int, typer.Option("--max-images", min=1, help="images drawn in the PNG")] = 8,
    overrides: SetOpt = None,
) -> None:
    """Sample the recipe's masks, print their statistics and draw them over images of its data set."""
    with _user_errors():
        from jepaflow.outputs import check_output_file

        output_file = check_output_file(output, (".png",), "--output")
        r = _load(recipe, overrides)
        if "masker" not in r.components:
            raise JepaflowError(f"the recipe {str(recipe)!r} has no masker section", "add `masker: {name: ...}`")
        if "encoder" not in r.components:
            raise JepaflowError(
                f"the recipe {str(recipe)!r} has no encoder section (it sets the patch grid)", "add `encoder: ...`"
            )
        import torch

        from jepaflow.cli.masks import render_masks
        from jepaflow.engine.build import build_dataset, build_encoder, build_masker
        from jepaflow.maskers.stats import mask_statistics

        with torch.device("meta"):  # only the grid and patch size are needed
            encoder = build_encoder(r)
        grid = tuple(encoder.grid_size)
        masker = build_masker(r)
        _check_masker(r, masker, grid, batch_size)  # Masker.check and the contract, as validate and run
        from jepaflow.testing import check_mask_batch, plugin_label

        label = plugin_label(masker, "masker", r.components["masker"].name)
        gen = torch.Generator().manual_seed(r.seed)
        from jepaflow.engine.faults import plugin_errors

        with plugin_errors("masker", masker, f"sampling masks on the {grid[0]}x{grid[1]} patch grid"):
            sampled = [masker(batch_size, grid, gen) for _ in range(batches)]
        for mb in sampled:  # every drawn batch keeps the contract, or the statistics would mislead
            check_mask_batch(mb, grid, batch_size, label, bool(getattr(masker, "allows_overlap", False)))
        stats = mask_statistics(sampled, grid)  # pooled image by image over the batches

        dataset = build_dataset(r, split="train", augment=True)
        n_img = min(max_images, batch_size, len(dataset))
        if n_img == 0:
            raise JepaflowError("the recipe's data set is empty", "check the data section of the recipe")
        images = torch.stack([dataset[i][0] for i in range(n_img)])
        try:
            output_file.parent.mkdir(parents=True, exist_ok=True)
            render_masks(images, sampled[0], grid, encoder.patch_size, output_file, max_images=n_img)
        except OSError as exc:
            from jepaflow.errors import OutputPathError

            raise OutputPathError(f"could not write {clip(str(output_file), 300)}: {exc.strerror or exc}",
                                  "free space or choose another --output") from None

    _print_mask_stats(stats, r.components["masker"].name, grid, batch_size * batches)
    from rich.markup import escape

    _console().print(f"wrote {escape(str(output_file))}")


def _print_mask_stats(stats: dict[str, Any], masker_name: str, grid: tuple[int, int], n: int) -> None:
    from rich.table import Table

    out = _console()
    out.print(f"masker {masker_name!r}: {n} masks on a {grid[0]}x{grid[1]} patch grid ({grid[0] * grid[1]} patches)")
    table = Table()
    table.add_column("statistic")
    table.add_column("value", justify="right")
    for key, value in stats.items():
        s = _scalar(value)
        if s is None:
            continue  # per-patch frequency maps: drawn in the PNG, not printed
        table.add_row(key.replace("_", " "), _fmt_value(s))
    out.print(table)


# ------------------------------------------------------------------------------------------------ probe
from jepaflow.cli.probe import PROBE_HELP, probe  # noqa: E402  (typer only; the work is imported inside)

app.command("probe", help=PROBE_HELP)(probe)


# ------------------------------------------------------------------------------------------------ plugins
def _status_text(info: PluginInfo) -> str:
    from rich.markup import escape

    if info.disabled is not None:
        return f"[yellow]disabled[/]: {escape(info.disabled)}"
    if info.collides_with:
        others = ", ".join(f"{o.package} {o.version} ({o.target})" for o in info.collides_with)
        return f"[bold red]name collision[/]: {escape(info.package)} ({escape(info.target)}) and {escape(others)}"
    if info.error is not None:
        return f"[bold red]failed to import[/]: {escape(info.error)}"
    if info.loaded is not None:
        return "[green]ok[/]"
    return info.status


@plugins_app.command("list")
def plugins_list() -> None:
    """List every installed plugin, importing each one; a broken plugin is reported, not fatal."""
    from rich.markup import escape
    from rich.table import Table

    from jepaflow.registry import default_registry

    infos = default_registry().infos(load=True, disabled=True)
    table = Table(title="jepaflow plugins")
    for col in ("kind", "name", "package", "version", "status"):
        table.add_column(col, overflow="fold")
    for info in infos:
        table.add_row(*(escape(c) for c in (info.kind, info.name, info.package, info.version)), _status_text(info))
    out = _console()
    out.print(table)
    problems = [i for i in infos if i.collides_with or i.error is not None]
    if problems:
        out.print(f"{len(problems)} plugin(s) unusable; `jepaflow plugins show NAME` gives the details.")


@plugins_app.command("show")
def plugins_show(
    name: Annotated[str, typer.Argument(help="plugin name, e.g. multiblock", show_default=False)],
    kind: Annotated[str | None, typer.Option("--kind", "-k", help="plugin kind, when a name exists in several")] = None,
) -> None:
    """Describe a plugin: its docstring, its package and its config fields (or why it failed to import)."""
    from jepaflow.registry import KINDS, default_registry

    reg = default_registry()
    with _user_errors():
        if kind is not None and kind not in KINDS:
            raise PluginError(f"unknown plugin kind {kind!r}", f"use one of: {', '.join(KINDS)}")
        found = [i for i in reg.find(name) if kind is None or i.kind == kind]
        if not found:
            names = sorted({i.name for i in reg.infos(kind)})
            what = f"{kind} plugin" if kind else "plugin"
            raise PluginError(
                f"no {what} named {name!r} (installed: {', '.join(names) or 'none'})",
                "`jepaflow plugins list` shows every installed plugin",
            )
    out = _console()
    for info in found:
        _show_one(out, reg, info)


def _show_one(out: Console, reg: Any, info: PluginInfo) -> None:
    from rich.markup import escape
    from rich.table import Table

    try:
        reg.get(info.kind, info.name)  # imports it; a failure is recorded on `info` and shown below
    except PluginError:
        pass
    out.rule(f"{info.kind} [bold]{escape(info.name)}[/]")
    out.print(f"package: {escape(info.package)} {escape(info.version)}   entry point: {escape(info.target)}")
    out.print(f"status:  {_status_text(info)}")
    if info.error is not None:
        out.print(escape(info.error_detail or info.error), soft_wrap=True)
        return
    if info.loaded is None:  # a name collision: neither side is imported
        return
    cls = info.loaded
    doc = inspect.cleandoc(cls.__dict__.get("__doc__") or "")  # its own, not a base class's
    first = " ".join(doc.split("\n\n")[0].split())
    if first:
        out.print(f"\n{escape(first)}\n", soft_wrap=True)
    config = getattr(cls, "Config", None)
    fields = getattr(config, "model_fields", None)
    if not fields:
        out.print("(no config fields)")
        return
    table = Table(title=f"config: {info.name}  (recipe section fields besides `name:`)")
    for col in ("field", "type", "default", "description"):
        table.add_column(col, overflow="fold")
    for fname, finfo in fields.items():
        cells = (fname, _type_name(finfo.annotation, finfo.metadata), _default_text(finfo), finfo.description or "")
        table.add_row(*(escape(c) for c in cells))  # "tuple[float, float]" is not rich markup
    out.print(table)


def _type_name(annotation: Any, metadata: list[Any] | None = None) -> str:
    """A field's type as a reader wants it: ``int ≥ 1, ≤ 8192``, ``float > 0, ≤ 64 | None``."""
    import typing

    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        return _type_name(args[0], [*_constraints_of(args[1:]), *(metadata or [])])
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", typing.Union)) and args:
        inner = [a for a in args if a is not type(None)]
        text = " | ".join(_type_name(a, metadata) for a in inner)
        return text + (" | None" if len(inner) < len(args) else "")
    if annotation is None or annotation is type(None):
        return "None"
    if isinstance(annotation, type) and not args:
        bounds: dict[str, str] = {}  # the field's own constraint (listed last) overrides its type's
        for m in metadata or []:
            for attr, sym, side in (("ge", "≥", "low"), ("gt", ">", "low"), ("le", "≤", "high"), ("lt", "<", "high")):
                if getattr(m, attr, None) is not None:
                    bounds[side] = f"{sym} {getattr(m, attr)}"
        shown = [bounds[s] for s in ("low", "high") if s in bounds]
        return annotation.__name__ + (" " + ", ".join(shown) if shown else "")
    if origin in (list, tuple) and args:
        items = ", ".join("..." if a is Ellipsis else _type_name(a, metadata if a is not Ellipsis else None)
                          for a in args)
        return f"{origin.__name__}[{items}]"
    return str(annotation).replace("typing.", "")


def _constraints_of(items: Any) -> list[Any]:
    """The ge/gt/le/lt constraints among ``Annotated`` extras (a pydantic ``FieldInfo`` or annotated-types)."""
    out: list[Any] = []
    for item in items:
        out += list(getattr(item, "metadata", None) or [item])
    return out


def _default_text(finfo: Any) -> str:
    if finfo.is_required():
        return "required"
    try:
        value = finfo.get_default(call_default_factory=True)
    except TypeError:  # pydantic < 2.10 has no call_default_factory for validated-data factories
        value = finfo.get_default()
    return repr(value)


# ------------------------------------------------------------------------------------------------ entry point
def main() -> None:
    """Console entry point (``jepaflow``)."""
    app(prog_name="jepaflow")


if __name__ == "__main__":
    main()
