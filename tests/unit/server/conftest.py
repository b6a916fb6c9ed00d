"""Fixtures for the core's unit tests: engines over the tiny model repository."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from rnnserve.server.engine import InferenceEngine
from rnnserve.server.settings import Settings

EngineFactory = Callable[..., Awaitable[InferenceEngine]]


@pytest.fixture
async def make_engine(tiny_repository: Path) -> AsyncIterator[EngineFactory]:
    """Start engines on the tiny repository with extra settings; all are stopped afterwards."""
    engines: list[InferenceEngine] = []

    async def make(**overrides: Any) -> InferenceEngine:
        values: dict[str, Any] = {"model_repository": tiny_repository, "metrics_port": None}
        values.update(overrides)
        engine = InferenceEngine(Settings(**values))
        await engine.start()
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        await engine.stop(0.5)


@pytest.fixture
async def engine(make_engine: EngineFactory) -> InferenceEngine:
    """An engine with default settings."""
    return await make_engine()
