"""Runs a load phase: workers, warm-up, bounds, progress bar, metrics scrape, and the result."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
from rnnserve.client._credentials import channel_credentials, channel_options
from rnnserve.client.load import prom
from rnnserve.client.load.config import LoadConfig
from rnnserve.client.load.drivers import RunContext, make_driver
from rnnserve.client.load.inputs import InputFactory, ModelShape, describe_model
from rnnserve.client.load.pacing import Bounds, Pacer
from rnnserve.client.load.stats import Recorder, Summary, summarise
from rnnserve.v1 import rnnserve_pb2_grpc as pb_grpc
from tqdm import tqdm

_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
]
_METHODS = {"stream": "Stream.step", "step": "Step", "generate": "Generate", "predict": "Predict"}
# Grace beyond the duration bound for replies already in flight, before stragglers are cancelled.
_STRAGGLER_GRACE_S = 5.0


@dataclass
class LoadResult:
    """Everything one run measured. `summary` covers the timed phase only (not the warm-up)."""

    config: LoadConfig
    model: ModelShape
    summary: Summary
    started_at: str
    client_cpu_s: float
    """CPU seconds this process spent during the timed phase (to spot a client-bound run)."""
    server: prom.ServerSplit | None = None
    latencies: list[float] = dataclasses.field(default_factory=list, repr=False)
    """Every successful message's latency in seconds (for plots)."""

    def to_dict(self, *, with_latencies: bool = False) -> dict[str, Any]:
        """A JSON-ready dict (latencies in seconds)."""
        data: dict[str, Any] = {
            # The token is a credential: a result file never holds it.
            "config": {k: v for k, v in dataclasses.asdict(self.config).items() if k != "token"},
            "model": dataclasses.asdict(self.model),
            "started_at": self.started_at,
            "client_cpu_s": self.client_cpu_s,
            "summary": dataclasses.asdict(self.summary),
            "server": None,
        }
        if self.server is not None:
            data["server"] = dataclasses.asdict(self.server)
            data["server"]["compute_per_step_s"] = self.server.compute_per_step_s
        if with_latencies:
            data["latencies"] = self.latencies
        return data


async def run_load_async(config: LoadConfig) -> LoadResult:
    """Run the load described by `config` against its target and return what it measured."""
    # A local subchannel pool per channel: otherwise channels to one target share a connection.
    options = [*_CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]
    # Files are read once, before any channel opens (a bad file leaves nothing to close).
    credentials = channel_credentials(
        tls=config.tls, tls_ca=config.tls_ca, tls_cert=config.tls_cert, tls_key=config.tls_key
    )
    options = channel_options(options, config.tls_server_name)
    channels = [
        _open_channel(config.target, credentials, options) for _ in range(config.connections)
    ]
    try:
        stubs = [pb_grpc.InferenceServiceStub(channel) for channel in channels]
        shape = await describe_model(stubs[0], config)
        inputs = InputFactory(shape, config.seed)
        max_chunk = max(1, shape.max_steps_per_message)
        if config.warmup_messages > 0:
            warmup = config.replace(
                steps=config.warmup_messages,
                sessions=config.concurrency,
                duration_s=None,
                max_messages=None,
                rate=None,
                start_position=min(config.start_position, max_chunk),
            )
            await _phase(stubs, warmup, inputs, Recorder(), max_chunk, progress=False)
        before = await _scrape(config.metrics_url, config.token)
        started_at = datetime.now(UTC).isoformat(timespec="seconds")
        recorder = Recorder()
        cpu = time.process_time()
        elapsed = await _phase(stubs, config, inputs, recorder, max_chunk, progress=config.progress)
        client_cpu = time.process_time() - cpu
        after = await _scrape(config.metrics_url, config.token)
    finally:
        for channel in channels:
            await channel.close()
    split = None
    if before is not None and after is not None:
        split = prom.server_split(before, after, config.model, _METHODS[config.mode])
    return LoadResult(
        config=config,
        model=shape,
        summary=summarise(recorder, elapsed, config.time_bucket_s),
        started_at=started_at,
        client_cpu_s=client_cpu,
        server=split,
        latencies=recorder.latency,
    )


def _open_channel(
    target: str, credentials: grpc.ChannelCredentials | None, options: list[tuple[str, Any]]
) -> grpc.aio.Channel:
    """One channel to the target: TLS with `credentials`, plaintext without."""
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=options)
    return grpc.aio.secure_channel(target, credentials, options=options)


def run_load(config: LoadConfig) -> LoadResult:
    """Blocking form of run_load_async (starts its own event loop)."""
    return asyncio.run(run_load_async(config))


async def _scrape(url: str | None, token: str | None) -> prom.Samples | None:
    if url is None:
        return None
    try:
        return await asyncio.to_thread(prom.scrape, url, token=token)
    except OSError:
        return None  # metrics are an extra: an unreachable endpoint must not fail the run


async def _phase(
    stubs: list[pb_grpc.InferenceServiceStub],
    config: LoadConfig,
    inputs: InputFactory,
    recorder: Recorder,
    max_chunk: int,
    *,
    progress: bool,
) -> float:
    """Run one phase to its bounds; returns its elapsed seconds."""
    start = time.perf_counter()
    recorder.start = start
    deadline = start + config.duration_s if config.duration_s is not None else None
    bounds = Bounds(deadline=deadline, messages=config.max_messages, sessions=config.session_budget)
    ctx = RunContext(config, inputs, recorder, bounds, max_chunk)
    driver = make_driver(ctx)
    interval = config.concurrency / config.rate if config.rate else None

    async def worker(index: int) -> None:
        offset = index / config.rate if config.rate else 0.0
        pacer = Pacer(interval, offset, start)
        stub = stubs[index % len(stubs)]
        while bounds.take_session():
            await driver.run_session(stub, pacer)

    tasks = [asyncio.create_task(worker(i)) for i in range(config.concurrency)]
    bar = asyncio.create_task(_progress(config, recorder, start)) if progress else None
    limit = None
    if config.duration_s is not None:
        limit = config.duration_s + config.timeout_s + _STRAGGLER_GRACE_S
    try:
        _done, pending = await asyncio.wait(tasks, timeout=limit)
        if pending:
            bounds.stop()
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for task in tasks:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    finally:
        bounds.stop()
        if bar is not None:
            bar.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await bar
    return time.perf_counter() - start


async def _progress(config: LoadConfig, recorder: Recorder, start: float) -> None:
    """A tqdm bar on stderr, refreshed a few times a second (never per message)."""
    by_time = config.message_budget is None
    total = config.duration_s if by_time else config.message_budget
    options: dict[str, Any] = {"total": total, "desc": f"{config.mode} x{config.concurrency}"}
    if by_time:
        options["bar_format"] = "{l_bar}{bar}| {n:.1f}/{total:.1f} s [{elapsed}{postfix}]"
    else:
        options["unit"] = "msg"

    def update(bar: tqdm[Any]) -> None:
        elapsed = time.perf_counter() - start
        bar.n = min(elapsed, total or elapsed) if by_time else recorder.messages
        bar.set_postfix(
            msg_s=f"{recorder.messages / max(elapsed, 1e-9):,.0f}",
            errors=recorder.messages - len(recorder.latency),
            refresh=False,
        )
        bar.refresh()

    with tqdm(**options) as bar:
        try:
            while True:
                await asyncio.sleep(0.25)
                update(bar)
        finally:
            update(bar)
