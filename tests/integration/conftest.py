"""Fixtures for integration tests: in-process servers over the tiny models (see server_helpers)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from server_helpers import Running, make_settings, running_server


@pytest.fixture
async def serve(tiny_repository: Path) -> AsyncIterator[Callable[..., Awaitable[Running]]]:
    """`await serve(**settings_overrides)` starts a server that is stopped after the test."""
    stack: list[Any] = []

    async def start(repository: Path | None = None, **overrides: Any) -> Running:
        manager = running_server(make_settings(repository or tiny_repository, **overrides))
        running = await manager.__aenter__()
        stack.append(manager)
        return running

    yield start
    for manager in reversed(stack):
        await manager.__aexit__(None, None, None)


@pytest.fixture
async def rpc(serve: Callable[..., Awaitable[Running]]) -> Running:
    """One server with default settings."""
    return await serve()
