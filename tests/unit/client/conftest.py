"""Fixtures of the client's unit tests: a fake server per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from client_fakes import FakeServer, start_fake_server


@pytest.fixture
def fake_server() -> Iterator[FakeServer]:
    """A fake rnnserve server on 127.0.0.1:<free port>, one per test."""
    server, fake = start_fake_server()
    try:
        yield fake
    finally:
        server.stop(grace=None)
