"""``jepaflow compare``: runs side by side, grouped over seeds, with confidence intervals, floors, a table and plots.

* :mod:`jepaflow.compare.records`: finding run folders and probe results, reading them, grouping, protocols;
* :mod:`jepaflow.compare.stats`: Student-t intervals and the rule that names a winner only without overlap;
* :mod:`jepaflow.compare.flops`: training FLOPs of a recipe (one step counted, times the steps);
* :mod:`jepaflow.compare.table`: rows, verdicts, ``compare.md`` and ``compare.csv``;
* :mod:`jepaflow.compare.plots`: the PNG figures.

:func:`compare` runs them in order. The rules are stated in docs/compare.md.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: file names inside the output folder
MARKDOWN, CSV, FLOPS_CACHE, FLOORS = "compare.md", "compare.csv", "flops_cache.json", "floors"


@dataclass
class CompareResult:
    comparison: Any  # jepaflow.compare.table.Comparison
    files: list[Path]


def default_output(paths: Sequence[str | Path]) -> Path:
    """``<the folder>/compare`` for one folder, else ``./compare``."""
    if len(paths) == 1 and Path(paths[0]).is_dir():
        return Path(paths[0]) / "compare"
    return Path("compare")


def compare(
    paths: Sequence[str | Path],
    output: str | Path | None = None,
    *,
    allow_mixed: bool = False,
    flops: bool = True,
    pixel_floor: bool = True,
    command: str | None = None,
    title: str = "Comparison",
    log: Callable[[str], None] = lambda _: None,
) -> CompareResult:
    """Compare every finished, probed run (and standalone probe) under ``paths``; write ``compare.md``,
    ``compare.csv`` and the plots into ``output``. With ``pixel_floor``, a raw-pixel probe with the runs' data
    and probe settings is computed when none is found (and kept under ``output/floors``, so the next compare
    reads it)."""
    from jepaflow.compare.flops import DEFAULT_MAX_BATCH, FlopsCache, step_flops
    from jepaflow.compare.plots import write_plots
    from jepaflow.compare.records import CompareError, discover, group_key
    from jepaflow.compare.table import build, csv_text, markdown
    from jepaflow.outputs import check_output_dir

    # before any run is read: a folder that cannot be written would cost the FLOP counts and the pixel floor
    out_dir = check_output_dir(output if output is not None else default_output(paths), "compare folder (--output)")
    search = list(paths) + ([out_dir / FLOORS] if (out_dir / FLOORS).is_dir() else [])
    found = discover(search)
    for folder, why in found.excluded:
        log(f"left out {folder}: {why}")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CompareError(f"cannot create the output folder {out_dir}: {exc.strerror or exc}",
                           "pass --output to a writable folder") from None
    notes: list[str] = []
    if pixel_floor and found.runs and not any(p.source_kind == "pixels" for p in found.probes):
        floor, note = compute_pixel_floor(found.runs, out_dir / FLOORS / "pixels", log)
        if floor is not None:
            found.probes.append(floor)
        if note:
            notes.append(note)

    count = None
    if flops:
        cache = FlopsCache(out_dir / FLOPS_CACHE)

        def count(recipe: dict[str, Any]):
            key = cache.key(group_key(recipe), DEFAULT_MAX_BATCH)
            hit = cache.get(key)
            if hit is None:
                log(f"counting the training FLOPs of one {recipe['objective']['name']} step")
                hit = step_flops(recipe, DEFAULT_MAX_BATCH)
                cache.put(key, hit)
            return hit

    comparison = build(found, allow_mixed=allow_mixed, flops=count)
    comparison.notes += notes
    plots = write_plots(comparison, out_dir)
    md = markdown(comparison, command=command, plots=[p.name for p in plots], title=title)
    files = [out_dir / MARKDOWN, out_dir / CSV, *plots]
    (out_dir / MARKDOWN).write_text(md)
    (out_dir / CSV).write_text(csv_text(comparison))
    return CompareResult(comparison, files)


def compute_pixel_floor(runs: list[Any], where: Path, log: Callable[[str], None]) -> tuple[Any | None, str | None]:
    """The raw-pixel floor (``jepaflow probe pixels``) on the data and with the probe settings of the most
    common protocol among ``runs``; written to ``where/probe.json``. Returns ``(ProbeResult or None, note)``."""
    from collections import Counter

    from jepaflow.compare.records import canonical, protocol, read_probe_json

    common = Counter(canonical(protocol(r.probe)) for r in runs).most_common(1)[0][0]
    run = next(r for r in runs if canonical(protocol(r.probe)) == common)
    try:
        from jepaflow.config import ProbeConfig
        from jepaflow.probes.cache import FeatureCache, cache_root
        from jepaflow.probes.data import build_probe_data
        from jepaflow.probes.evaluate import probe_encoder, write_probe_json
        from jepaflow.probes.sources import inspect_source, source_encoder
    except ImportError as exc:  # a jepaflow without the pixel source
        return None, f"raw-pixel floor not computed: {exc}"
    settings = {**run.probe.settings, "encoder": None, "layers": "last"}
    try:
        cfg = ProbeConfig.model_validate(settings)
        section = run.probe.data_section
        log(f"computing the raw-pixel floor on {section.get('name')} (cached: {where})")
        data = build_probe_data(section)
        model, desc = source_encoder(inspect_source("pixels"), None, section, cfg.seed)
        doc = probe_encoder(model, data, cfg, source=desc, device="cpu", cache=FeatureCache(cache_root(None)),
                            log=log)
        path = write_probe_json(doc, where / "probe.json")
    except Exception as exc:  # the floor is context; its failure must not cost the comparison
        return None, f"raw-pixel floor not computed: {type(exc).__name__}: {exc}"
    return read_probe_json(path), None


__all__ = ["CompareResult", "compare", "compute_pixel_floor", "default_output"]
