"""The asyncio rnnserve client: the same classes and methods as :mod:`rnnserve.client`, awaited.

::

    from rnnserve.client.aio import AsyncClient

    async with AsyncClient("localhost:50051") as client:
        async with client.session("char-lstm") as s:
            out = await s.feed("hello")

Everything here is also importable from :mod:`rnnserve.client`.
"""

from rnnserve.client.aio._client import AsyncClient
from rnnserve.client.aio._connection import AsyncSessionStream
from rnnserve.client.aio._session import AsyncSession
from rnnserve.client.aio._streams import AsyncGeneration, AsyncOutputStream

__all__ = [
    "AsyncClient",
    "AsyncGeneration",
    "AsyncOutputStream",
    "AsyncSession",
    "AsyncSessionStream",
]
