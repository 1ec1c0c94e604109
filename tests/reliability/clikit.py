"""Helpers of the reliability suite (``from clikit import ...``): run the CLI and check that a failure is one
message.

"One message" means: the exit code asked for (2 for bad input, 3 for divergence), ``error:`` on stderr with every
expected fragment, no traceback anywhere, and a bounded length (echoed values are capped).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[2]

runner = CliRunner()


def invoke(*args, env: dict[str, str] | None = None):
    """``jepaflow ARGS`` in this process (typer's runner): fast, stdout and stderr kept apart."""
    from jepaflow.cli.main import app

    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "250", **(env or {})})


def assert_one_message(result, *fragments: str, code: int = 2, max_len: int = 8000) -> str:
    """The CLI stopped with ``code``, printed ``error: ...`` containing ``fragments`` and no traceback.
    Returns stderr."""
    out, err = result.stdout, result.stderr
    assert result.exit_code == code, f"exit {result.exit_code}, exception {result.exception!r}\n{out}\n{err}"
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in out + err, out + err
    assert "error:" in err, err
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in:\n{err}"
    assert len(err) < max_len, f"message of {len(err)} characters"
    return err


def cli_process(*args, cwd: Path, timeout: float = 240, env: dict[str, str] | None = None,
                **kw) -> subprocess.CompletedProcess:
    """``python -m jepaflow.cli.main ARGS`` in a real process (signals, resource limits, users)."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "250", **(env or {})}
    return subprocess.run([sys.executable, "-m", "jepaflow.cli.main", *map(str, args)], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout, **kw)


def assert_process_message(done: subprocess.CompletedProcess, *fragments: str, code: int = 2) -> None:
    assert done.returncode == code, f"exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert "Traceback" not in done.stdout + done.stderr, done.stderr[-3000:]
    assert "error:" in done.stderr, done.stderr[-3000:]
    for fragment in fragments:
        assert fragment in done.stderr, f"{fragment!r} not in:\n{done.stderr[-3000:]}"

