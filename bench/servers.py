"""Server processes under test (the echo floor and rnnserve), with their RSS and CPU time."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """A server in its own process, so the load generator and the server share no interpreter."""

    def __init__(self, name: str, command: list[str], port: int, log: Path, **env: str) -> None:
        self.name = name
        self.port = port
        self.target = f"127.0.0.1:{port}"
        self._log = log.open("w")
        self._proc = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **env}
        )
        self._wait_ready(60.0)

    @property
    def pid(self) -> int:
        return self._proc.pid

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self._proc.returncode}: see {self._log.name}"
                )
            with grpc.insecure_channel(self.target) as channel:
                try:
                    grpc.channel_ready_future(channel).result(timeout=1.0)
                    return
                except grpc.FutureTimeoutError:
                    continue
        raise RuntimeError(f"{self.name} not ready after {timeout_s} s")

    def rss_bytes(self) -> int:
        """Resident memory now."""
        with open(f"/proc/{self.pid}/statm") as statm:
            return int(statm.read().split()[1]) * _PAGE

    def cpu_seconds(self) -> float:
        """User + system CPU time used so far (all threads)."""
        with open(f"/proc/{self.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._log.close()


def start_echo(log_dir: Path, logits: int) -> ServerProcess:
    """The trivial echo server (transport floor), replying `logits` float32 per step."""
    port = free_port()
    script = Path(__file__).with_name("echo_server.py")
    command = [sys.executable, str(script), "--port", str(port), "--logits", str(logits)]
    return ServerProcess("echo", command, port, log_dir / "echo.log")


def start_transport_only(log_dir: Path, logits: int) -> ServerProcess:
    """rnnserve's gRPC transport over a no-op engine (bench/transport_only.py)."""
    port = free_port()
    script = Path(__file__).with_name("transport_only.py")
    command = [sys.executable, str(script), "--port", str(port), "--logits", str(logits)]
    return ServerProcess("transport", command, port, log_dir / "transport.log")


def start_rnnserve(
    log_dir: Path, repository: Path, model: str, **settings: str
) -> tuple[ServerProcess, str]:
    """rnnserve serving `model`; returns the process and its metrics URL."""
    port, metrics_port = free_port(), free_port()
    command = [
        sys.executable, "-m", "rnnserve.server.cli", "serve",
        "--model-repository", str(repository),
        "--models", model,
        "--port", str(port),
        "--metrics-port", str(metrics_port),
        "--log-level", "warning",
    ]  # fmt: skip
    env = {f"RNNSERVE_{key.upper()}": value for key, value in settings.items()}
    process = ServerProcess("rnnserve", command, port, log_dir / "rnnserve.log", **env)
    return process, f"http://127.0.0.1:{metrics_port}/metrics"
