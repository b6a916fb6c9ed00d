"""An in-process rnnserve server on its own event-loop thread, for the sync and async clients."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from rnnserve.server.app import build_server
from rnnserve.server.settings import Settings


class ServerThread:
    """Runs build_server(settings) in a background thread so blocking clients can call it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.port = 0
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="rnnserve-test-server", daemon=True)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(60):
            raise TimeoutError("the server did not start within 60 s")
        if self._failure is not None:
            raise self._failure
        return self

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            server, self.port = build_server(self.settings)
            await server.start()
        except BaseException as error:
            self._failure = error
            self._ready.set()
            return
        self._ready.set()
        await self._stop.wait()
        await server.stop(1.0)

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


def server_settings(repository: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "metrics_port": None,
        "model_repository": repository,
        "shutdown_grace_s": 1.0,
    }
    values.update(overrides)
    return Settings(**values)
