"""Where the server's time goes: py-spy samples of its process, summarised by thread and frame."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any


def py_spy() -> str | None:
    """The py-spy executable (dev extra), or None when it is not installed."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.is_file() else shutil.which("py-spy")


def start_recording(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes] | None:
    """Sample `pid` for `seconds` at 200 Hz into a raw (collapsed stacks) file."""
    exe = py_spy()
    if exe is None:
        return None
    command = [exe, "record", "-p", str(pid), "-d", str(max(1, round(seconds))), "-r", "200",
               "--threads", "--nonblocking", "-f", "raw", "-o", str(out)]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


# Frames every sample passes through (interpreter start, event loop, thread start-up).
_PLUMBING = ("<module>", "main (", "run (", "Runner.", "BaseEventLoop.run", "Thread.", "_bootstrap",
             "_command_serve", "_run_module_as_main", "_run_code",
             "BaseEventLoop._run_once")  # fmt: skip


def _short(frame: str) -> str:
    # "func (path/to/file.py:123)" -> "func (file.py)"; line numbers split one function apart.
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit('/', 1)[-1].split(':', 1)[0]})" if where else name


def summarise(raw: Path, top: int = 15) -> dict[str, Any]:
    """Share of samples per thread; per frame, self and inclusive share of the busiest thread."""
    threads: Counter[str] = Counter()
    stacks: list[tuple[str, list[str], int]] = []
    for line in raw.read_text(encoding="utf-8").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        thread = frames[0].split(": ", 1)[-1]
        threads[thread] += int(count)
        stacks.append((thread, [_short(f) for f in frames[1:]], int(count)))
    if not threads:
        return {"samples": 0}
    main = threads.most_common(1)[0][0]
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for thread, frames, count in stacks:
        if thread != main or not frames:
            continue
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    total = threads[main]
    everything = sum(threads.values())
    return {
        "samples": everything,
        "threads": {name: n / everything for name, n in threads.most_common()},
        "main_thread": main,
        "self": [(frame, n / total) for frame, n in own.most_common(top)],
        "inclusive": [
            (frame, n / total)
            for frame, n in inclusive.most_common(top + 12)
            if not frame.startswith(_PLUMBING)
        ][:top],
    }
