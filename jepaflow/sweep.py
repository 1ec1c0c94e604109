"""``jepaflow sweep``: the matrix recipes x seeds, one run after another, each in its own run folder, resumable.

Run ``i`` of the matrix (recipes in the order given, seeds inside) trains ``RECIPE`` with ``seed=k`` into
``OUTPUT/<recipe file stem>/seed<k>``. Each run is a child process, ``python -m jepaflow.cli.main run RECIPE
--output RUN_DIR --set seed=k [--set ...] [--resume]``: the run is exactly what ``jepaflow run`` would do, a crash
in one run (even of the interpreter) cannot take the sweep down, and a stop signal reaches the trainer's own
handler, which writes a checkpoint. The child's output goes to ``RUN_DIR/sweep.log``; the sweep reads its
progress from ``metrics.jsonl``.

What a run folder holds decides what happens to it (:func:`run_state`):

* **done**: ``summary.json`` says the run reached its last step (``optim.epochs``, or ``train.max_steps``) and,
  when the recipe probes, ``probe.json`` exists: skipped;
* **resume**: ``checkpoints/last.pt`` exists otherwise (a stopped or failed run): continued with ``--resume``,
  which gives the loss sequence an uninterrupted run would have had (it also redoes a probe that was cut short);
* **new**: started.

Before anything runs, every recipe is validated and every existing run folder is checked against the recipe it
would now run: a folder holding a run of another recipe (other than in ``train``/``probe``) is refused.

A failed run (any exit code but 0 and the stop codes) is reported and the sweep goes on; when it failed on bad
input (exit code 2), the other seeds of that recipe would fail the same way and are not started. SIGTERM or
SIGINT stops the sweep: the running child is sent SIGTERM, writes its checkpoint and exits, the manifest is
written, and the sweep exits with 143 / 130; the same command continues where it stopped. Exit code 1 when a run
failed, 0 when every run is done.

``OUTPUT/sweep.json`` (the manifest) lists every run with its state, its last outcome and its headline probe
accuracies; it is rebuilt from the run folders each time it is written, so it is right even when several
processes (``--index`` in an array job) share the folder.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from jepaflow.errors import JepaflowError

SCHEMA = "jepaflow-sweep"
SCHEMA_VERSION = 1
MANIFEST = "sweep.json"
LOG_NAME = "sweep.log"
#: exit codes of a run stopped by a signal after writing its checkpoint (jepaflow run)
STOP_CODES = {130: "SIGINT", 143: "SIGTERM"}
#: recipe sections a run may change between its start and its resumption (as jepaflow run allows)
RESUMABLE_SECTIONS = ("train", "probe", "output_dir")
#: seconds between two looks at a running child's metrics
POLL_S = 0.5


class SweepError(JepaflowError):
    """A sweep that cannot start as asked (bad recipes, folder collisions, a folder holding another run)."""


@dataclass
class PlannedRun:
    """One cell of the matrix."""

    index: int
    recipe_path: Path
    stem: str
    seed: int
    overrides: list[str]
    run_dir: Path
    recipe: dict[str, Any]  # resolved, as the child will run it (seed included)
    state: str = "new"  # done | resume | new
    outcome: str | None = None  # this session's: done | stopped | failed | not started
    exit_code: int | None = None
    error: str | None = None
    seconds: float | None = None

    @property
    def name(self) -> str:
        return f"{self.stem}/seed{self.seed}"

    def command(self, python: str = sys.executable) -> list[str]:
        """The child's command line (``jepaflow run`` with this run's folder, seed and overrides)."""
        cmd = [python, "-m", "jepaflow.cli.main", "run", str(self.recipe_path), "--output", str(self.run_dir),
               "--set", f"seed={self.seed}"]
        for o in self.overrides:
            cmd += ["--set", o]
        cmd += ["--set", "train.progress=false"]  # the sweep draws one progress view for everything
        if self.state == "resume":
            cmd.append("--resume")
        return cmd


# ------------------------------------------------------------------------------------------------ state
def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def run_state(run_dir: Path, recipe: dict[str, Any]) -> str:
    """``done``, ``resume`` or ``new`` for a run folder (module docstring)."""
    summary = _read_json(run_dir / "summary.json")
    if isinstance(summary, dict) and not summary.get("exit_code"):
        total = int(summary.get("total_steps") or 0)
        cap = (recipe.get("train") or {}).get("max_steps")
        want = min(total, int(cap)) if cap else total
        probe = summary.get("probe")
        probed = (not (recipe.get("probe") or {}).get("enabled") or (run_dir / "probe.json").is_file()
                  or (isinstance(probe, dict) and "skipped" in probe))  # e.g. a data set without labels
        if total and int(summary.get("step") or 0) >= want and probed:
            return "done"
    if (run_dir / "checkpoints" / "last.pt").is_file():
        return "resume"
    return "new"


def recipe_differences(stored: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """Sections (and ``train.batch_size``) in which a run folder's recipe differs from the one a sweep would
    run there; the run could not be resumed with it, and a finished run would be counted for the wrong recipe."""
    keys = sorted(k for k in set(stored) | set(wanted) if k not in RESUMABLE_SECTIONS and stored.get(k) != wanted.get(k))
    if (stored.get("train") or {}).get("batch_size") != (wanted.get("train") or {}).get("batch_size"):
        keys.append("train.batch_size")
    return keys


def plan(recipes: Sequence[str | Path], seeds: Sequence[int], overrides: Sequence[str], output: str | Path,
         per_recipe: dict[str, list[str]] | None = None) -> list[PlannedRun]:
    """Validate every recipe and lay out the matrix; every problem is reported at once as a :class:`SweepError`
    before anything runs. ``per_recipe`` adds overrides to single recipes (by path as given)."""
    import yaml

    from jepaflow.config import load_recipe
    from jepaflow.errors import RecipeError

    if not recipes:
        raise SweepError("no recipe given", "pass one or more recipe files: jepaflow sweep A.yaml B.yaml ...")
    if not seeds:
        raise SweepError("no seed to run", "pass --seeds N (N >= 1)")
    if any(o.strip().startswith("seed=") or o.strip().startswith("seed ") for o in overrides):
        raise SweepError("--set seed=... conflicts with the sweep's seeds",
                         "choose the seeds with --seeds N and --first-seed S")
    if any(o.strip().startswith("output_dir=") for o in overrides):
        raise SweepError("--set output_dir=... conflicts with the sweep's run folders",
                         "choose the sweep folder with --output; each run goes to OUTPUT/<recipe stem>/seed<k>")
    from jepaflow.outputs import check_output_dir

    out = check_output_dir(output, "sweep folder (--output)")  # before any recipe is read or any run starts
    problems: list[str] = []
    stems: dict[str, str] = {}
    runs: list[PlannedRun] = []
    for recipe in recipes:
        path = Path(recipe)
        stem = path.stem
        if stem in stems:
            problems.append(f"{path} and {stems[stem]} would share the run folders {out / stem}/seed*: rename one")
            continue
        stems[stem] = str(path)
        extra = list(overrides) + list((per_recipe or {}).get(str(recipe), []))
        try:
            resolved = load_recipe(path, extra + [f"seed={seeds[0]}"]).to_dict()
        except RecipeError as exc:
            problems.append(exc.problem)
            continue
        except JepaflowError as exc:
            problems.append(f"{path}: {exc.problem}")
            continue
        for seed in seeds:
            r = {**resolved, "seed": int(seed)}
            runs.append(PlannedRun(len(runs), path, stem, int(seed), extra, out / stem / f"seed{seed}", r))
    if problems:
        raise SweepError("the sweep cannot start:\n  " + "\n  ".join(problems),
                         "fix the recipes or overrides named above; nothing has run")
    clashes = []
    for run in runs:
        stored_path = run.run_dir / "recipe.yaml"
        if stored_path.is_file():
            try:
                stored = yaml.safe_load(stored_path.read_text())
            except (OSError, yaml.YAMLError):
                stored = None
            if isinstance(stored, dict):
                diff = recipe_differences(stored, run.recipe)
                if diff and (run.run_dir / "checkpoints" / "last.pt").exists():
                    clashes.append(f"{run.run_dir} holds a run of another recipe (differs in {', '.join(diff)})")
        run.state = run_state(run.run_dir, run.recipe)
    if clashes:
        raise SweepError("\n  ".join(["the sweep folder holds runs of other recipes:"] + clashes),
                         "use another --output, or remove those run folders, or run the recipes they were made with")
    return runs


# ------------------------------------------------------------------------------------------------ manifest
def manifest(runs: Sequence[PlannedRun], output: Path, seeds: Sequence[int], overrides: Sequence[str],
             command: Sequence[str] | None) -> dict[str, Any]:
    """The ``sweep.json`` document: every run's state on disk now, with this session's outcome (or, for runs this
    session did not touch, the outcome the previous manifest recorded while the folder is unchanged)."""
    previous = _read_json(output / MANIFEST)
    before = {}
    if isinstance(previous, dict) and isinstance(previous.get("runs"), list):
        before = {r.get("run_dir"): r for r in previous["runs"] if isinstance(r, dict)}
    entries = []
    for run in runs:
        rel = str(run.run_dir.relative_to(output)) if run.run_dir.is_relative_to(output) else str(run.run_dir)
        state = run_state(run.run_dir, run.recipe)
        entry: dict[str, Any] = {"index": run.index, "recipe": str(run.recipe_path), "seed": run.seed,
                                 "run_dir": rel, "state": state}
        if run.outcome is not None:
            entry.update({"outcome": run.outcome, "exit_code": run.exit_code, "error": run.error,
                          "seconds": None if run.seconds is None else round(run.seconds, 1),
                          "at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
        elif rel in before and state != "done":
            for k in ("outcome", "exit_code", "error", "seconds", "at"):
                if k in before[rel]:
                    entry[k] = before[rel][k]
        summary = _read_json(run.run_dir / "summary.json")
        if state == "done" and isinstance(summary, dict):
            probe = summary.get("probe")
            if isinstance(probe, dict):
                entry["probe"] = {k: v for k, v in probe.items() if isinstance(v, (int, float)) and k != "seconds"}
        entries.append(entry)
    counts: dict[str, int] = {}
    for e in entries:
        counts[e["state"]] = counts.get(e["state"], 0) + 1
    return {
        "schema": SCHEMA, "version": SCHEMA_VERSION,
        "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": list(command) if command else None,
        "recipes": sorted({str(r.recipe_path) for r in runs}, key=[str(r.recipe_path) for r in runs].index),
        "seeds": list(seeds), "overrides": list(overrides), "counts": counts, "runs": entries,
    }


def write_manifest(doc: dict[str, Any], output: Path) -> None:
    output.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".sweep.", suffix=".tmp", dir=output)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
        os.replace(tmp, output / MANIFEST)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# ------------------------------------------------------------------------------------------------ running
@dataclass
class StopRequest:
    """Set by the sweep's SIGTERM/SIGINT handler; forwarded once to the running child as SIGTERM."""

    signum: int | None = None
    child: subprocess.Popen | None = None
    forwarded: bool = False
    _previous: dict[int, Any] = field(default_factory=dict)

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: no signal handling
                pass

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = self.signum or signum
        self.forward()

    def forward(self) -> None:
        # The child runs in its own session (a terminal's Ctrl-C reaches the sweep only), so it hears one
        # SIGTERM from here: the trainer's handler checkpoints at the next step boundary and exits with 143.
        if self.child is not None and self.child.poll() is None and not self.forwarded:
            self.forwarded = True
            try:
                self.child.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass


def last_step(run_dir: Path) -> int | None:
    """The step of the last complete line of ``metrics.jsonl`` (read from the file's end)."""
    path = run_dir / "metrics.jsonl"
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 8192))
            tail = f.read().decode(errors="replace")
    except OSError:
        return None
    for line in reversed(tail.splitlines()[1:] if size > 8192 else tail.splitlines()):
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("step"), int):
            return rec["step"]
    return None


def total_steps(run_dir: Path, recipe: dict[str, Any]) -> int | None:
    """The steps the run will make, once its ``env.json`` is written (``train.max_steps`` when smaller)."""
    env = _read_json(run_dir / "env.json")
    if not isinstance(env, dict) or not env.get("total_steps"):
        return None
    cap = (recipe.get("train") or {}).get("max_steps")
    return min(int(env["total_steps"]), int(cap)) if cap else int(env["total_steps"])


def error_message(log_path: Path) -> str:
    """What a failed child said: its ``error:`` and ``fix:`` lines, else its last line."""
    try:
        lines = [ln.rstrip() for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].lstrip().startswith("error:"):
            block = [lines[i].strip()]
            block += [ln.strip() for ln in lines[i + 1:i + 3] if ln.lstrip().startswith("fix:")]
            return " ".join(block)
    return lines[-1].strip() if lines else "no output"


def execute(run: PlannedRun, stop: StopRequest, on_poll: Callable[[PlannedRun, int | None, int | None], None],
            python: str = sys.executable) -> None:
    """Run one child to its end (or to a stop); sets ``run.outcome``, ``exit_code``, ``error``, ``seconds``."""
    run.run_dir.mkdir(parents=True, exist_ok=True)
    log_path = run.run_dir / LOG_NAME
    t0 = time.perf_counter()
    with open(log_path, "a") as log:
        log.write(f"\n=== jepaflow sweep {datetime.now(timezone.utc).isoformat(timespec='seconds')}: "
                  f"{' '.join(run.command(python))}\n")
        log.flush()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        child = subprocess.Popen(run.command(python), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 env=env, start_new_session=True)
        stop.child, stop.forwarded = child, False
        if stop.signum is not None:  # a signal arrived while the child was being started
            stop.forward()
        try:
            while child.poll() is None:
                on_poll(run, last_step(run.run_dir), total_steps(run.run_dir, run.recipe))
                try:
                    child.wait(timeout=POLL_S)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            if child.poll() is None:  # the sweep itself is dying (an exception here): leave no orphan behind
                child.send_signal(signal.SIGTERM)
                child.wait()
            stop.child = None
    run.seconds = time.perf_counter() - t0
    run.exit_code = child.returncode
    rc = child.returncode
    on_poll(run, last_step(run.run_dir), total_steps(run.run_dir, run.recipe))
    if rc in STOP_CODES or (rc is not None and rc < 0 and -rc in (signal.SIGTERM, signal.SIGINT)):
        run.outcome = "stopped"
    elif rc == 0 and run_state(run.run_dir, run.recipe) == "done":
        run.outcome = "done"
    else:
        run.outcome = "failed"
        run.error = error_message(log_path) if rc != 0 else "exited 0 but the run folder does not hold a finished run"


def headline(run_dir: Path) -> str:
    """`` (linear 84.1%, knn 83.0%)`` from a finished run's summary.json (empty without a probe)."""
    summary = _read_json(run_dir / "summary.json")
    probe = summary.get("probe") if isinstance(summary, dict) else None
    if not isinstance(probe, dict):
        return ""
    text = ", ".join(f"{k} {v * 100:.1f}%" for k, v in probe.items()
                     if isinstance(v, (int, float)) and k != "seconds" and not k.endswith("_random_init"))
    return f" ({text})" if text else ""


def run_sweep(runs: list[PlannedRun], output: Path, seeds: Sequence[int], overrides: Sequence[str],
              command: Sequence[str] | None = None, only: Sequence[int] | None = None,
              console: Any = None, python: str = sys.executable) -> int:
    """Run the planned matrix (or the runs numbered ``only``); returns the exit code (module docstring)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = console or Console()
    selected = [r for r in runs if only is None or r.index in set(only)]
    write_manifest(manifest(runs, output, seeds, overrides, command), output)
    stop = StopRequest()
    stop.install()
    failed_input: set[str] = set()  # recipes whose run failed on bad input (exit 2)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=console, transient=True)
    try:
        with progress:
            overall = progress.add_task("sweep", total=len(selected))
            current = progress.add_task("", total=None, visible=False)

            def on_poll(run: PlannedRun, step: int | None, total: int | None) -> None:
                progress.update(current, description=f"  {run.name}", completed=step or 0, total=total, visible=True)

            for run in selected:
                run.state = run_state(run.run_dir, run.recipe)
                if run.state == "done":
                    progress.console.print(f"[dim]skip[/] {run.name}: finished{headline(run.run_dir)}")
                    progress.advance(overall)
                    continue
                if stop.signum is not None:
                    break
                if str(run.recipe_path) in failed_input:
                    run.outcome, run.error = "not started", "another seed of this recipe failed on bad input"
                    progress.console.print(f"[yellow]not started[/] {run.name}: {run.error}")
                    progress.advance(overall)
                    continue
                verb = "resume" if run.state == "resume" else "start"
                progress.console.print(f"{verb} {run.name} -> {run.run_dir}")
                execute(run, stop, on_poll, python)
                progress.update(current, visible=False)
                write_manifest(manifest(runs, output, seeds, overrides, command), output)
                if run.outcome == "done":
                    progress.console.print(f"[green]done[/] {run.name} in {run.seconds:.0f} s"
                                           f"{headline(run.run_dir)}")
                elif run.outcome == "stopped":
                    progress.console.print(f"[yellow]stopped[/] {run.name} (exit {run.exit_code}); its checkpoint "
                                           "is kept and the same command resumes it")
                    stop.signum = stop.signum or (signal.SIGINT if run.exit_code == 130 else signal.SIGTERM)
                    break
                else:
                    progress.console.print(f"[bold red]failed[/] {run.name} (exit {run.exit_code}): {run.error} "
                                           f"(log: {run.run_dir / LOG_NAME})")
                    if run.exit_code == 2:
                        failed_input.add(str(run.recipe_path))
                progress.advance(overall)
    finally:
        stop.restore()
        write_manifest(manifest(runs, output, seeds, overrides, command), output)
    if stop.signum is not None:
        name = signal.Signals(stop.signum).name
        console.print(f"sweep stopped by {name}; run the same command again to continue")
        return 130 if stop.signum == signal.SIGINT else 143
    bad = [r for r in selected if r.outcome in ("failed", "not started")]
    done = sum(1 for r in selected if run_state(r.run_dir, r.recipe) == "done")
    console.print(f"sweep: {done} of {len(selected)} runs finished, {len(bad)} failed or not started; manifest "
                  f"{output / MANIFEST}")
    return 1 if bad else 0


__all__ = ["MANIFEST", "PlannedRun", "SweepError", "execute", "manifest", "plan", "recipe_differences",
           "run_state", "run_sweep", "write_manifest"]
