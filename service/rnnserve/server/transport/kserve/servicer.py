"""inference.GRPCInferenceService (KServe v2 with Triton's sequences) over the InferenceCore."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from importlib import metadata
from typing import Any

from rnnserve.kserve.v2 import grpc_service_pb2 as kpb
from rnnserve.kserve.v2 import grpc_service_pb2_grpc
from rnnserve.server.core import InferenceCore
from rnnserve.server.domain import ModelDescription
from rnnserve.server.errors import ModelNotFound, ModelNotStreamable, ShuttingDown
from rnnserve.server.logs import SESSION_ID
from rnnserve.server.offload import run_sized
from rnnserve.server.transport.context import deadline_of, identity_of
from rnnserve.server.transport.errors import report, rpc_handler
from rnnserve.server.transport.kserve import codecs
from rnnserve.server.transport.limits import DEFAULT_LIMITS, RequestLimits
from rnnserve.server.transport.observe import record_call
from rnnserve.server.transport.undecodable import Undecodable

SERVER_NAME = "rnnserve"
# Protocol extensions served (Triton's names): sequences, model configuration, statistics, and
# request parameters.
EXTENSIONS = ("sequence", "model_configuration", "statistics", "parameters")


def _server_version() -> str:
    try:
        return metadata.version("rnnserve")
    except metadata.PackageNotFoundError:  # running from a tree that was never installed
        return "0+unknown"


async def infer(
    core: InferenceCore,
    request: kpb.ModelInferRequest,
    identity: str,
    deadline: float | None,
    limits: RequestLimits = DEFAULT_LIMITS,
) -> kpb.ModelInferResponse:
    """The one inference path of this front door (ModelInfer and each ModelStreamInfer request).

    A request with a sequence id steps that sequence's session (`sequence_start` opens it,
    `sequence_end` closes it after a successful step); one without runs stateless sequences.
    The caps are checked before anything is decoded; a large batch is decoded and encoded off
    the event loop.
    """
    codecs.check_ids(request, limits)  # before the name is looked up (and quoted in errors)
    description = describe_model(core, request.model_name, request.model_version, "model_")
    manifest = description.manifest
    large = codecs.is_large_request(request, limits)
    call = await run_sized(large, codecs.decode_call, request, manifest, limits)
    if call.sequence is None:
        outcomes = await core.predict(
            call.model, call.version, call.sequences, call.options, input_field="inputs"
        )
        return await run_sized(large, codecs.encode_response, request, description, call, outcomes)
    if not manifest.streamable:
        raise ModelNotStreamable(
            f"model {manifest.name!r} is whole-sequence only (bidirectional): send ModelInfer "
            "without sequence parameters",
            field=f"parameters.{codecs.SEQUENCE_ID}",
        )
    view = await core.open_sequence(
        call.model, call.version, identity, call.sequence, start=call.start
    )
    SESSION_ID.set(view.session_id)
    outcome = await core.step(
        view.session_id,
        identity,
        call.sequences[0],
        call.options,
        input_field="inputs[0]",
        deadline=deadline,
    )
    if call.end:
        await core.close_session(view.session_id, identity)
    return codecs.encode_response(
        request, description, call, [outcome], (view.session_id, outcome.step_count)
    )


def describe_model(
    core: InferenceCore, name: str, version: str, prefix: str = ""
) -> ModelDescription:
    """The model a request names, with Triton's words and this protocol's field names."""
    try:
        return core.get_model(name, codecs.decode_version(version, f"{prefix}version"))
    except ModelNotFound as err:
        field = f"{prefix}version" if err.field == "model.version" else f"{prefix}name"
        raise ModelNotFound(f"Request for unknown model: {err.message}", field=field) from None


class KServeServicer(grpc_service_pb2_grpc.GRPCInferenceServiceServicer):
    """The Open Inference Protocol face of the serving core; holds no state of its own."""

    def __init__(
        self,
        core: InferenceCore,
        *,
        sequence_idle_s: float,
        limits: RequestLimits = DEFAULT_LIMITS,
    ) -> None:
        self._core = core
        self._idle_s = sequence_idle_s
        self._limits = limits  # request caps, checked before any decoding

    @rpc_handler
    async def ServerLive(
        self, request: kpb.ServerLiveRequest, context: Any
    ) -> kpb.ServerLiveResponse:
        return kpb.ServerLiveResponse(live=True)

    @rpc_handler
    async def ServerReady(
        self, request: kpb.ServerReadyRequest, context: Any
    ) -> kpb.ServerReadyResponse:
        return kpb.ServerReadyResponse(ready=self._core.ready)

    @rpc_handler
    async def ModelReady(
        self, request: kpb.ModelReadyRequest, context: Any
    ) -> kpb.ModelReadyResponse:
        try:
            describe_model(self._core, request.name, request.version)
        except ModelNotFound:
            return kpb.ModelReadyResponse(ready=False)
        return kpb.ModelReadyResponse(ready=self._core.ready)

    @rpc_handler
    async def ServerMetadata(
        self, request: kpb.ServerMetadataRequest, context: Any
    ) -> kpb.ServerMetadataResponse:
        return kpb.ServerMetadataResponse(
            name=SERVER_NAME, version=_server_version(), extensions=EXTENSIONS
        )

    @rpc_handler
    async def ModelMetadata(
        self, request: kpb.ModelMetadataRequest, context: Any
    ) -> kpb.ModelMetadataResponse:
        return codecs.encode_metadata(describe_model(self._core, request.name, request.version))

    @rpc_handler
    async def ModelConfig(
        self, request: kpb.ModelConfigRequest, context: Any
    ) -> kpb.ModelConfigResponse:
        description = describe_model(self._core, request.name, request.version)
        return kpb.ModelConfigResponse(config=codecs.encode_config(description, self._idle_s))

    @rpc_handler
    async def ModelStatistics(
        self, request: kpb.ModelStatisticsRequest, context: Any
    ) -> kpb.ModelStatisticsResponse:
        version = codecs.decode_version(request.version, "version")
        if request.name:
            describe_model(self._core, request.name, request.version)  # Triton's NOT_FOUND
        statistics = self._core.model_statistics(request.name, version)
        return kpb.ModelStatisticsResponse(
            model_stats=[codecs.encode_statistics(s) for s in statistics]
        )

    @rpc_handler
    async def ModelInfer(
        self, request: kpb.ModelInferRequest, context: Any
    ) -> kpb.ModelInferResponse:
        return await infer(
            self._core, request, identity_of(context), deadline_of(context), self._limits
        )

    @rpc_handler
    async def ModelStreamInfer(
        self,
        request_iterator: AsyncIterator[kpb.ModelInferRequest | Undecodable],
        context: Any,
    ) -> AsyncIterator[kpb.ModelStreamInferResponse]:
        """Answer each request in order; a failed one gets its error in-band, the stream goes on.

        Only a server shutdown ends the stream with a status (UNAVAILABLE). A message whose bytes
        do not parse is such a failed request (INVALID_ARGUMENT in-band).
        """
        identity = identity_of(context)
        async for request in request_iterator:
            started, code = time.perf_counter(), "OK"
            try:
                if isinstance(request, Undecodable):
                    raise request.error()
                response = await infer(
                    self._core, request, identity, deadline_of(context), self._limits
                )
                answer = kpb.ModelStreamInferResponse(infer_response=response)
            except ShuttingDown:
                record_call("ModelStreamInfer.infer", "UNAVAILABLE", time.perf_counter() - started)
                raise
            except Exception as err:
                failure = report(err, "ModelStreamInfer.infer")
                code = failure.code_name
                answer = kpb.ModelStreamInferResponse(
                    error_message=failure.message, infer_response=_identified(request)
                )
            record_call("ModelStreamInfer.infer", code, time.perf_counter() - started)
            yield answer


def _identified(request: kpb.ModelInferRequest | Undecodable) -> kpb.ModelInferResponse:
    """The response fields that tie an in-band error to its request (none for undecodable bytes)."""
    if isinstance(request, Undecodable):
        return kpb.ModelInferResponse()
    return kpb.ModelInferResponse(
        model_name=request.model_name, model_version=request.model_version, id=request.id
    )
