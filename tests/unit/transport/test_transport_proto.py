"""The API's guard rails: buf lint, no breaking change against the v1 baseline, no codegen drift."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
PROTOS = ROOT / "protos"
BASELINE = PROTOS / "baseline" / "rnnserve_v1.binpb"


def _buf() -> str:
    beside = Path(sys.executable).parent / "buf"  # PyPI buf-bin installs it into the venv
    found = str(beside) if beside.is_file() else shutil.which("buf")
    if found is None:
        pytest.skip("the buf binary is missing (pip install buf-bin, part of the [dev] extra)")
    return found


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_buf_lint_is_clean() -> None:
    result = _run([_buf(), "lint"], PROTOS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_breaking_change_against_the_v1_baseline() -> None:
    assert BASELINE.is_file(), "protos/baseline/rnnserve_v1.binpb is the committed baseline"
    result = _run([_buf(), "breaking", "--against", str(BASELINE.relative_to(PROTOS))], PROTOS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_generated_code_has_not_drifted() -> None:
    result = _run([sys.executable, "scripts/gen_proto.py", "--check"], ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
