"""Run the tests against the installed package when there is one, else against ``src/`` (a plain checkout),
whatever folder pytest is started from."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("jepaflow_stripes") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
