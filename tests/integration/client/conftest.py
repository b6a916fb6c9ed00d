"""Fixtures of the client's integration tests: one real server per test module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from client_server import ServerThread, server_settings


@pytest.fixture(scope="module")
def server(tiny_repository: Path) -> Iterator[ServerThread]:
    """One real server over the tiny models for the whole test module."""
    running = ServerThread(server_settings(tiny_repository)).start()
    try:
        yield running
    finally:
        running.stop()
