"""Tests of the benchmark's helpers: bench/ holds scripts, not a package, so put it on sys.path."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
if str(BENCH) not in sys.path:
    # Appended: bench's script names (report, model, ...) must not shadow anything installed.
    sys.path.append(str(BENCH))
