"""Real servers for the scale-out tests (redis-server, rnnserve workers, HAProxy), started per test.

Each server runs as its own process on a free loopback port with its files in a temporary folder,
and is stopped by its pid. A missing binary skips the test with the reason, unless
RNNSERVE_REQUIRE_SCALE_DEPS=1 (CI sets it after `make scale-deps`): then it fails.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass
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


# -- rnnserve worker processes and HAProxy in front of them ------------------------------------

REPO_ROOT = Path(__file__).resolve().parent.parent
HAPROXY_CONFIG = REPO_ROOT / "deploy" / "haproxy" / "haproxy.cfg"


def _wait_until(
    ready: Callable[[], bool], what: str, process: subprocess.Popen[bytes], timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode} before it was ready")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} was not ready after {timeout:g} s")
        time.sleep(0.1)


def stop_process(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Stop a process we started, by its pid: `sig`, then SIGKILL after 15 s."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class Worker:
    """One `rnnserve serve` process."""

    process: subprocess.Popen[bytes]
    port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def kill(self) -> None:
        """kill -9: the process dies with whatever it held."""
        stop_process(self.process, signal.SIGKILL)


def _serving(port: int) -> bool:
    # Imported here: only the tests that start workers need the server package.
    from rnnserve.server import cli

    with redirect_stderr(io.StringIO()), redirect_stdout(io.StringIO()):
        return cli.main(["healthcheck", "--port", str(port), "--timeout", "1"]) == 0


@contextmanager
def rnnserve_workers(
    count: int, repository: Path, workdir: Path, *flags: str
) -> Iterator[list[Worker]]:
    """`count` rnnserve processes on free ports serving `repository` (extra `flags` for each),
    each with its own snapshot folder and log under `workdir`; yields once all are SERVING."""
    workers: list[Worker] = []
    try:
        for index in range(count):
            port = free_port()
            with (workdir / f"worker{index}.log").open("wb") as log:
                process = subprocess.Popen(
                    [
                        sys.executable, "-m", "rnnserve.server.cli", "serve",
                        "--port", str(port),
                        "--metrics-port", "-1",
                        "--model-repository", str(repository),
                        "--snapshot-dir", str(workdir / f"snapshots{index}"),
                        *flags,
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )  # fmt: skip
            workers.append(Worker(process, port))
        for worker in workers:
            _wait_until(lambda w=worker: _serving(w.port), "rnnserve", worker.process, 60)  # type: ignore[misc]
        yield workers
    finally:
        for worker in workers:
            stop_process(worker.process)


@dataclass
class HAProxy:
    """A running HAProxy with deploy/haproxy/haproxy.cfg in front of two workers."""

    process: subprocess.Popen[bytes]
    port: int
    stats_port: int
    servers: tuple[str, ...] = ("worker1", "worker2")
    """HAProxy's names of the backend servers, in the order of the workers given."""

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def server_states(self) -> dict[str, str]:
        """Each backend server's state as HAProxy sees it now ("UP", "DOWN", "UP 1/2", ...)."""
        url = f"http://127.0.0.1:{self.stats_port}/;csv"
        with urllib.request.urlopen(url, timeout=5) as reply:  # our own stats port
            rows = csv.DictReader(io.StringIO(reply.read().decode().lstrip("# ")))
            return {row["svname"]: row["status"] for row in rows if row["svname"] in self.servers}

    def server_counter(self, server: str, counter: str) -> int:
        """One counter of a backend server from the stats page ("stot": calls sent to it)."""
        url = f"http://127.0.0.1:{self.stats_port}/;csv"
        with urllib.request.urlopen(url, timeout=5) as reply:  # our own stats port
            rows = csv.DictReader(io.StringIO(reply.read().decode().lstrip("# ")))
            return next(int(row[counter]) for row in rows if row["svname"] == server)

    def wait_for_states(self, wanted: dict[str, str], timeout: float = 30) -> float:
        """Wait until the named servers are in the wanted states; returns the seconds it took."""
        started = time.monotonic()
        _wait_until(
            lambda: all(self.server_states().get(k) == v for k, v in wanted.items()),
            f"haproxy servers {wanted}",
            self.process,
            timeout,
        )
        return time.monotonic() - started


@contextmanager
def haproxy_server(
    workers: Sequence[Worker | str], workdir: Path, *, wait_up: bool = True
) -> Iterator[HAProxy]:
    """HAProxy 2.6 running the repository's deploy/haproxy/haproxy.cfg in front of two workers
    (or "host:port" addresses of gRPC servers), on free ports; yields once both pass its gRPC
    health check (or at once, without `wait_up`)."""
    require_binary("haproxy", "haproxy")
    if len(workers) != 2:
        raise ValueError("deploy/haproxy/haproxy.cfg names two workers")
    addresses = [w if isinstance(w, str) else w.address for w in workers]
    proxy = launch_haproxy(
        HAPROXY_CONFIG,
        workdir,
        ("worker1", "worker2"),
        {"RNNSERVE_WORKER1": addresses[0], "RNNSERVE_WORKER2": addresses[1]},
    )
    try:
        if wait_up:
            proxy.wait_for_states({"worker1": "UP", "worker2": "UP"})
        yield proxy
    finally:
        stop_process(proxy.process)


def launch_haproxy(
    config: Path,
    workdir: Path,
    servers: tuple[str, ...],
    env: dict[str, str] | None = None,
    preexec_fn: Callable[[], None] | None = None,
) -> HAProxy:
    """HAProxy on `config` (with `env`), its front end and stats page on free ports
    (RNNSERVE_PROXY_BIND / RNNSERVE_PROXY_STATS), logging to workdir/haproxy.log; returns once
    the front end listens (its backend `servers` may not be UP yet)."""
    port, stats_port = free_port(), free_port()
    environment = {
        **os.environ,
        **(env or {}),
        "RNNSERVE_PROXY_BIND": f"127.0.0.1:{port}",
        "RNNSERVE_PROXY_STATS": f"127.0.0.1:{stats_port}",
    }
    with (workdir / "haproxy.log").open("wb") as log:
        # -db: stay in the foreground, so the pid held here is HAProxy itself.
        process = subprocess.Popen(
            [shutil.which("haproxy") or "/usr/sbin/haproxy", "-f", str(config), "-db"],
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=preexec_fn,
        )
    try:
        wait_for_port(port, process)
    except BaseException:
        stop_process(process)
        raise
    return HAProxy(process, port, stats_port, servers=servers)


@dataclass
class RedisServer:
    """A redis-server of this test; `stop()` then `start()` restarts it on the same port and
    folder (with `appendonly`, the AOF is replayed: every acknowledged write is back)."""

    binary: str
    directory: Path
    port: int
    appendonly: bool
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--dir", str(self.directory),
                "--save", "",
                # fsync at every write: a kill -9 of Redis itself loses nothing it acknowledged
                "--appendonly", "yes" if self.appendonly else "no",
                "--appendfsync", "always",
                "--logfile", str(self.directory / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        _wait_until(lambda: _accepts(self.port), "redis-server", self.process, 15)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop it by its pid (SIGKILL: a crash) and wait for it to exit."""
        if self.process is not None:
            stop_process(self.process, sig)


def _accepts(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@contextmanager
def redis_server(directory: Path, *, appendonly: bool = False) -> Iterator[RedisServer]:
    """A redis-server on a free loopback port with its files in `directory`, stopped at exit."""
    binary = require_binary("redis-server", "redis-server")
    server = RedisServer(binary, directory, free_port(), appendonly)
    server.start()
    try:
        yield server
    finally:
        server.stop()
