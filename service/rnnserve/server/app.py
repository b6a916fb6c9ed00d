"""Composition root: wires the engine, the gRPC services, health, reflection and metrics."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

import grpc
from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection, reflection_pb2
from rnnserve.kserve.v2 import grpc_service_pb2 as kserve_pb2
from rnnserve.server.allocator import fix_mmap_threshold
from rnnserve.server.engine import InferenceEngine
from rnnserve.server.logs import configure_logging
from rnnserve.server.metrics_http import MetricsEndpoint, metrics_endpoint_for
from rnnserve.server.settings import Settings
from rnnserve.server.transport.auth import AuthPolicy, CallGate, check_listener
from rnnserve.server.transport.kserve.servicer import KServeServicer
from rnnserve.server.transport.limits import limits_for, server_options
from rnnserve.server.transport.registration import add_foreign_servicer, add_servicer
from rnnserve.server.transport.servicer import InferenceServicer
from rnnserve.server.transport.tls import bind, server_credentials
from rnnserve.v1 import rnnserve_pb2

log = logging.getLogger(__name__)

INFERENCE_SERVICE = rnnserve_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name
KSERVE_SERVICE = kserve_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
# After the engine has drained and snapshotted, calls still open (idle streams) get this long to
# send what they already have before they are cancelled.
FLUSH_GRACE_S = 0.5
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class RnnServeServer:
    """The whole service: gRPC server, engine, health status and metrics endpoint.

    `start()` binds, loads the models (health NOT_SERVING until then) and goes SERVING;
    `stop(grace)` goes NOT_SERVING, stops accepting calls, lets the engine drain and snapshot,
    then ends what is left.
    """

    def __init__(
        self,
        settings: Settings,
        engine: InferenceEngine,
        grpc_server: Any,
        port: int,
        *,
        metrics: MetricsEndpoint | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.grpc_server = grpc_server
        self.port = port
        self.health = HealthServicer()
        self.metrics_port: int | None = None  # the metrics endpoint's bound port once started
        self._metrics = metrics
        self._stopping = False

    async def start(self) -> None:
        """Start serving: bind, load models and restore sessions, then report SERVING."""
        await self._set_health(_NOT_SERVING)
        await self.grpc_server.start()
        try:
            await self._start_metrics()
            await self.engine.start()
        except BaseException:
            await self.grpc_server.stop(None)
            await self._stop_metrics()
            raise
        await self._set_health(_SERVING)
        log.info("serving rnnserve.v1 on port %d", self.port, extra={"port": self.port})

    async def stop(self, grace_s: float | None = None) -> None:
        """Graceful stop: NOT_SERVING, refuse new calls, drain and snapshot, then close."""
        if self._stopping:
            return
        self._stopping = True
        grace = self.settings.shutdown_grace_s if grace_s is None else grace_s
        await self._set_health(_NOT_SERVING)
        # Stops accepting at once; calls already running (open streams) may go on for `grace`.
        refusing = asyncio.create_task(self.grpc_server.stop(grace))
        try:
            await self.engine.stop(grace)
        finally:
            await self.grpc_server.stop(min(grace, FLUSH_GRACE_S))
            await refusing
            await self._stop_metrics()
        log.info("stopped")

    async def wait_for_termination(self) -> None:
        """Block until the gRPC server has stopped."""
        await self.grpc_server.wait_for_termination()

    async def _set_health(self, status: int) -> None:
        for service in ("", INFERENCE_SERVICE, KSERVE_SERVICE):
            await self.health.set(service, status)

    async def _start_metrics(self) -> None:
        if self._metrics is None:
            return
        self.metrics_port = await self._metrics.start()
        log.info(
            "metrics on %s port %d",
            self._metrics.host,
            self.metrics_port,
            extra={"port": self.metrics_port},
        )

    async def _stop_metrics(self) -> None:
        if self._metrics is not None:
            await self._metrics.close()


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def _descriptor(module: Any, service: str) -> Any:
    """The ServiceDescriptor of `service` in a generated `*_pb2` module."""
    return module.DESCRIPTOR.services_by_name[service]


def build_server(settings: Settings) -> tuple[RnnServeServer, int]:
    """Wire everything for `settings` and bind the port (not started; call `await start()`).

    Returns the server and the bound port (the actual one when settings.port is 0). Must be
    called with an asyncio event loop running (grpc.aio).
    """
    # Security settings fail the start before anything is built: tokens file, TLS files, and
    # the rule that a non-loopback listener needs authentication (or an explicit opt-in).
    auth = AuthPolicy.from_settings(settings)
    check_listener(settings, auth)
    credentials = server_credentials(settings)
    # The metrics endpoint follows the same rule, or asks for the same tokens (metrics_auth).
    metrics = metrics_endpoint_for(settings, auth.tokens)
    engine = InferenceEngine(settings)
    limits = limits_for(settings)  # request caps, and gRPC's receive limit derived from them
    # so_reuseport off: a second server on a taken port must fail, not silently share it.
    # The call gate authenticates every call (and holds its principal's call slot) before the
    # handler runs.
    # server_options: an over-size message or metadata is refused by gRPC (RESOURCE_EXHAUSTED)
    # before any Python runs.
    grpc_server = grpc.aio.server(
        interceptors=[CallGate(auth)],
        options=[("grpc.so_reuseport", 0), *server_options(limits)],
    )
    port = bind(grpc_server, _address(settings.host, settings.port), credentials)
    server = RnnServeServer(settings, engine, grpc_server, port, metrics=metrics)
    # Two front doors on one port, over the same core: steps from both share one batch.
    # Every service is registered from its descriptor with a request decoder that never raises:
    # bytes that do not parse answer INVALID_ARGUMENT (in-band inside a stream), not UNKNOWN.
    # A request longer than its method could legally need is refused unparsed (body_limit).
    add_servicer(
        grpc_server,
        _descriptor(rnnserve_pb2, "InferenceService"),
        InferenceServicer(engine, limits=limits, write_timeout_s=settings.generate_write_timeout_s),
        limits,
    )
    kserve = KServeServicer(engine, sequence_idle_s=settings.session_ttl_s, limits=limits)
    add_servicer(grpc_server, _descriptor(kserve_pb2, "GRPCInferenceService"), kserve, limits)
    add_foreign_servicer(grpc_server, _descriptor(health_pb2, "Health"), server.health, limits)
    reflected = (INFERENCE_SERVICE, KSERVE_SERVICE, HEALTH_SERVICE, reflection.SERVICE_NAME)
    add_foreign_servicer(
        grpc_server,
        _descriptor(reflection_pb2, "ServerReflection"),
        reflection.aio.ReflectionServicer(reflected),
        limits,
    )
    return server, port


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then stop gracefully within settings.shutdown_grace_s."""
    configure_logging(settings.log_level, json_format=settings.log_json)
    fix_mmap_threshold()  # refused multi-MB requests must not stay in RSS
    server, _ = build_server(settings)
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop_requested.set)
    await server.start()
    await stop_requested.wait()
    log.info("stop requested; draining for up to %.1f s", settings.shutdown_grace_s)
    await server.stop(settings.shutdown_grace_s)
