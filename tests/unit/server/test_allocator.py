"""The server fixes glibc's mmap threshold, unless the operator set one."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CHECK = "from rnnserve.server.allocator import fix_mmap_threshold; print(fix_mmap_threshold())"


def _run(env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_the_threshold_is_fixed_on_glibc_and_an_operators_setting_wins() -> None:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    assert _run(env) == "True"
    assert _run({**env, "MALLOC_MMAP_THRESHOLD_": "65536"}) == "False"
