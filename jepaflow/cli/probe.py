"""``jepaflow probe SOURCE``: frozen-feature probes of a run, a checkpoint, a timm architecture or raw pixels.

The command resolves the source (:mod:`jepaflow.probes.sources`), the data section (``--data``, default: the
run's own) and the probe settings (the run's ``probe:`` section or the defaults, then ``--set probe.x=...`` and
the ``--probe/--layers/--encoder`` shortcuts), then calls :func:`jepaflow.probes.evaluate.probe_encoder`, the
code of the end-of-run probe. It prints a table and writes ``probe.json`` (docs/probes.md).

Only typer is imported at module level: ``jepaflow --help`` stays cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

#: ``jepaflow probe --help`` (one string per paragraph: rich keeps explicit line breaks)
PROBE_HELP = "\n\n".join([
    "Probe frozen features: linear (logistic regression solved to convergence, C chosen on a validation split of "
    "the train split), kNN (k=20, cosine), attentive (one-query cross-attention head) and low-shot.",
    "SOURCE is a jepaflow run folder or checkpoint, an official I-JEPA checkpoint, timm:NAME (a timm model at "
    "random initialization: the architecture floor) or pixels (the raw-pixel floor).",
    "Features are cached on disk (~/.cache/jepaflow/features, $JEPAFLOW_CACHE or --cache): probing the same "
    "checkpoint again does not run the encoder. Protocols and the probe.json format: docs/probes.md.",
])


def probe(
    source: Annotated[str, typer.Argument(help="run folder, checkpoint, official I-JEPA checkpoint, timm:NAME or "
                                               "pixels", show_default=False)],
    data: Annotated[str | None, typer.Option(
        "--data", "-d", help="recipe or data-section YAML (or inline YAML); default: the run's own data section")] = None,
    probes: Annotated[str | None, typer.Option(
        "--probe", "-p", help="comma-separated probes: linear,knn,attentive,lowshot (default: the settings' kinds)")
    ] = None,
    layers: Annotated[str | None, typer.Option("--layers", help="last | last4")] = None,
    encoder: Annotated[str | None, typer.Option(
        "--encoder", "-e", help="encoder role, e.g. target or context (default: the representation encoder)")] = None,
    overrides: Annotated[list[str] | None, typer.Option(
        "--set", "-s", metavar="PATH=VALUE", help="override probe.* or data.* fields, e.g. --set probe.seed=1")] = None,
    output: Annotated[str | None, typer.Option(
        "--output", "-o", help="probe.json path or folder (default: the run folder, else ./probe.json)")] = None,
    cache: Annotated[Path | None, typer.Option("--cache", help="feature cache folder (default: $JEPAFLOW_CACHE or "
                                                               "~/.cache/jepaflow/features)")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="neither read nor write cached features")] = False,
    device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda")] = "auto",
) -> None:
    """Probe frozen features (see PROBE_HELP)."""
    from jepaflow.cli.main import _console, _user_errors

    with _user_errors():
        doc, path = run_probe_command(source, data, probes, layers, encoder, overrides or [], output, cache,
                                      no_cache, device, log=lambda m: _console(stderr=True).print(f"jepaflow: {m}"))
    _console().print(probe_table(doc))
    for note in probe_notes(doc):
        _console().print(f"note: {note}")
    _console().print(f"wrote {path}")


def run_probe_command(
    source: str, data: str | None, probes: str | None, layers: str | None, encoder: str | None,
    overrides: list[str], output: str | Path | None, cache: Path | None, no_cache: bool, device: str, log: Any,
) -> tuple[dict[str, Any], Path]:
    """Everything ``jepaflow probe`` does but printing; returns ``(probe.json document, where it was written)``."""

    from jepaflow.errors import JepaflowError
    from jepaflow.probes.cache import FeatureCache, cache_root
    from jepaflow.probes.data import build_probe_data
    from jepaflow.probes.evaluate import probe_encoder, write_probe_json
    from jepaflow.probes.sources import build_run_objective, inspect_source, pick_encoder, source_encoder

    if output is not None:  # a place probe.json cannot be written is refused before anything is read or computed
        probe_json_path(output, None)
    src = inspect_source(source)
    path = probe_json_path(output, src.run_dir)
    section, cfg = resolve_settings(src, data, probes, layers, encoder, overrides)
    dev = _device(device)
    model, desc = source_encoder(src, cfg.encoder, section, cfg.seed)  # a bad file is refused before data loads
    probe_data = build_probe_data(section)
    model = model.to(dev)
    baseline = None
    if cfg.random_init_baseline:
        if src.recipe is None:
            log(f"note: probe.random_init_baseline applies to jepaflow runs; {src.kind} sources have none "
                "(probe timm:NAME for an architecture floor)")
        else:
            obj = build_run_objective(src.recipe, None, str(src.path))
            baseline = pick_encoder(obj, cfg.encoder, str(src.path))[0].to(dev).eval().requires_grad_(False)
    store = FeatureCache(None if no_cache else cache_root(cache))
    doc = probe_encoder(model, probe_data, cfg, source=desc, device=dev, cache=store, baseline=baseline, log=log)
    try:
        write_probe_json(doc, path)
    except OSError as exc:
        raise JepaflowError(f"cannot write {path}: {exc}", "pass --output to a writable place") from None
    return doc, path


def probe_json_path(output: str | Path | None, run_dir: Path | None) -> Path:
    """Where probe.json goes: ``--output`` (a ``.json`` file, or a folder: its ``probe.json``), else the run
    folder's, else ``./probe.json``; checked writable (:func:`jepaflow.outputs.check_output_file`), so that a bad
    place is one message before any feature is computed."""
    from jepaflow.outputs import check_output_file

    if output is None:
        return check_output_file((run_dir or Path(".")) / "probe.json", (".json",), "probe.json path")
    text = str(output)
    if not text.strip() or "\0" in text:  # refused by check_output_file with its own message
        return check_output_file(text, (".json",), "--output")
    out = Path(text)
    path = out / "probe.json" if out.is_dir() or not out.suffix else out
    return check_output_file(path, (".json",), "--output")


def resolve_settings(src: Any, data: str | None, probes: str | None, layers: str | None, encoder: str | None,
                     overrides: list[str]) -> tuple[dict[str, Any], Any]:
    """``(resolved data section, ProbeConfig)`` from the source's recipe, ``--data``, ``--set`` and the shortcuts;
    every problem is reported at once (:class:`RecipeError` with paths)."""
    from pydantic import ValidationError

    from jepaflow.config import ProbeConfig, _pydantic_issues, apply_overrides
    from jepaflow.errors import JepaflowError, RecipeError
    from jepaflow.probes.data import read_data_spec, resolve_data_section

    if data is not None:
        data_raw = read_data_spec(data)
    elif src.recipe is not None and isinstance(src.recipe.get("data"), dict):
        data_raw = dict(src.recipe["data"])
    else:
        raise JepaflowError(f"--data is required to probe {src.spec!r} (only jepaflow runs carry their data)",
                            "pass --data RECIPE (its data section is used) or a data-section YAML, e.g. "
                            "--data recipes/fashion_mnist_ijepa.yaml")
    probe_raw = dict(src.recipe.get("probe") or {}) if src.recipe is not None else {}
    probe_raw.pop("enabled", None)
    bad = [o for o in overrides if not o.strip().startswith(("probe.", "data."))]
    if bad:
        raise RecipeError([(o.partition("=")[0], "jepaflow probe sets probe.* and data.* fields only") for o in bad],
                          source="--set")
    raw = apply_overrides({"data": data_raw, "probe": probe_raw}, overrides)
    if probes is not None:
        raw["probe"]["kinds"] = [k.strip() for k in probes.split(",") if k.strip()]
    if layers is not None:
        raw["probe"]["layers"] = layers
    if encoder is not None:
        raw["probe"]["encoder"] = encoder
    issues: list[tuple[str, str]] = []
    section = cfg = None
    try:
        section = resolve_data_section(raw["data"])
    except RecipeError as exc:
        issues += exc.issues
    try:
        cfg = ProbeConfig.model_validate(raw["probe"])
    except ValidationError as exc:
        issues += _pydantic_issues(exc, prefix="probe")
    if issues:
        raise RecipeError(issues, source="the probe settings (--data, --set, --probe, --layers, --encoder)")
    return section, cfg


def _device(name: str) -> Any:
    import torch

    from jepaflow.errors import JepaflowError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise JepaflowError(f"unknown device {name!r}", "use --device auto, cpu or cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise JepaflowError("--device cuda, but no CUDA device is available", "use --device cpu or auto")
    return torch.device(name)


def probe_notes(doc: dict[str, Any]) -> list[str]:
    """What a reader of the table must know: skipped probes, and linear fits that stopped at
    ``probe.linear_max_iter`` before reaching ``probe.linear_tol``."""
    notes = [f"{kind} skipped: {why}" for kind, why in doc.get("skipped", {}).items()]
    linear = doc["probes"].get("linear")
    grid = doc["settings"].get("linear_C") or []
    if linear is not None and len(grid) > 1 and linear["hyperparameters"]["C"] in (min(grid), max(grid)):
        notes.append(f"linear: the chosen C={linear['hyperparameters']['C']:g} is at an end of probe.linear_C "
                     f"({', '.join(f'{c:g}' for c in grid)}); a wider grid may do better on validation")
    solver = doc["probes"].get("linear", {}).get("solver", {})
    unconverged = [c for c, rec in solver.items() if not rec["converged"]]
    if unconverged:
        notes.append(f"linear: the L-BFGS fit for {', '.join('C=' + c if c != 'refit' else 'the refit' for c in unconverged)} "
                     f"stopped at probe.linear_max_iter ({doc['settings']['linear_max_iter']}) before reaching "
                     "probe.linear_tol; raise probe.linear_max_iter (--set probe.linear_max_iter=N)")
    return notes


def probe_table(doc: dict[str, Any]) -> Any:
    """A rich table of a probe.json document: one row per probe (low-shot: one per setting)."""
    from rich.markup import escape
    from rich.table import Table

    src, data = doc["source"], doc["data"]
    splits = data["splits"]
    title = (f"{src['kind']} {src.get('spec') or ''} | encoder {src.get('role') or '-'} | layers {src['layers']} | "
             f"{data['section']['name']}: {splits['fit']} fit / {splits['val']} val / {splits['test']} test")
    table = Table(title=escape(title))
    base = doc.get("baselines", {}).get("random_init")
    columns = ["probe", "test accuracy", "val accuracy", "chosen", "seconds"] + (["random init"] if base else [])
    for col in columns:
        table.add_column(col, justify="left" if col in ("probe", "chosen") else "right")
    for kind, res in doc["probes"].items():
        if kind == "lowshot":
            for name, s in res["settings"].items():
                row = [f"lowshot {name}", f"{s['mean'] * 100:.2f} ± {s['std'] * 100:.2f}",
                       f"{sum(s['val_accuracies']) / len(s['val_accuracies']) * 100:.2f}",
                       "C " + ", ".join(f"{c:g}" for c in s["C"]), f"{s['seconds']:.1f}"]
                if base:
                    b = base["probes"].get("lowshot", {}).get("settings", {}).get(name)
                    row.append("" if b is None else f"{b['mean'] * 100:.2f} ± {b['std'] * 100:.2f}")
                table.add_row(*(escape(c) for c in row))
            continue
        hp = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in res["hyperparameters"].items())
        val = res.get("val_accuracy")
        row = [kind, f"{res['accuracy'] * 100:.2f}", "" if val is None else f"{val * 100:.2f}", hp,
               f"{res['seconds']:.1f}"]
        if base:
            b = base["probes"].get(kind)
            row.append("" if b is None else f"{b['accuracy'] * 100:.2f}")
        table.add_row(*(escape(c) for c in row))
    return table


__all__ = ["PROBE_HELP", "probe", "probe_json_path", "probe_notes", "probe_table", "resolve_settings", "run_probe_command"]
