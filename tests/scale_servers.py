"""Real servers for the scale-out tests (redis-server; HAProxy is added beside it), started per test.

Each server runs as its own process on a free loopback port with its files in a temporary folder,
and is stopped by its pid. A missing binary skips the test with the reason, unless
RNNSERVE_REQUIRE_SCALE_DEPS=1 (CI sets it after `make scale-deps`): then it fails.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REQUIRE_ENV = "RNNSERVE_REQUIRE_SCALE_DEPS"


def require_binary(name: str, package: str) -> str:
    """The path of `name`; skips (or, with RNNSERVE_REQUIRE_SCALE_DEPS=1, fails) without it."""
    path = shutil.which(name)
    if path is not None:
        return path
    reason = f"{name} is not installed (Debian package {package}; `make scale-deps` installs it)"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason}, and {REQUIRE_ENV}=1 requires it")
    pytest.skip(reason)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the server binds it a moment later)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    """Until something accepts on `port`; fails if the process exits or the time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before listening")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listened on port {port} within {timeout_s} s")


@dataclass
class RedisServer:
    """A redis-server of this test: its port and folder; stop() / start() keep both."""

    binary: str
    directory: Path
    port: int
    appendonly: bool
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start (or restart) it on the same port and folder (the AOF, if any, is replayed)."""
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.directory),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "always",
            "--daemonize",
            "no",
            "--logfile",
            str(self.directory / "redis.log"),
        ]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, self.process)

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Stop it by its pid (SIGKILL for a crash) and wait for it to exit."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


@contextmanager
def redis_server(directory: Path, *, appendonly: bool = False) -> Iterator[RedisServer]:
    """A redis-server on a free port with its files in `directory`, stopped at exit.

    `appendonly` turns on AOF with fsync at every write, so a restart keeps every acknowledged
    write (what the server's `sync` durability promises).
    """
    binary = require_binary("redis-server", "redis-server")
    server = RedisServer(binary, directory, free_port(), appendonly)
    server.start()
    try:
        yield server
    finally:
        server.stop()
