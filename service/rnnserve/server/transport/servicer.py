"""rnnserve.v1.InferenceService over the core: each handler decodes, calls the core, encodes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import Any

from rnnserve.server.core import InferenceCore
from rnnserve.server.domain import SessionView
from rnnserve.server.logs import SESSION_ID
from rnnserve.server.offload import is_large, run_sized
from rnnserve.server.transport import codecs
from rnnserve.server.transport.affinity import announce_session, session_header
from rnnserve.server.transport.context import deadline_of, identity_of
from rnnserve.server.transport.errors import ClientNotReading, rpc_handler
from rnnserve.server.transport.limits import DEFAULT_LIMITS, RequestLimits
from rnnserve.server.transport.steps import run_step
from rnnserve.server.transport.stream import StreamConversation
from rnnserve.server.transport.writer import DEFAULT_WRITE_TIMEOUT_S, PacedWriter
from rnnserve.v1 import rnnserve_pb2 as pb
from rnnserve.v1 import rnnserve_pb2_grpc


class InferenceServicer(rnnserve_pb2_grpc.InferenceServiceServicer):
    """The gRPC face of the serving core; holds no state of its own."""

    def __init__(
        self,
        core: InferenceCore,
        *,
        limits: RequestLimits = DEFAULT_LIMITS,
        write_timeout_s: float = DEFAULT_WRITE_TIMEOUT_S,
    ) -> None:
        self._core = core
        self._limits = limits  # request caps, checked before any decoding
        self._write_timeout_s = write_timeout_s  # how long a Generate waits for its client

    @rpc_handler
    async def Stream(
        self, request_iterator: AsyncIterator[pb.StreamRequest], context: Any
    ) -> AsyncIterator[pb.StreamResponse]:
        conversation = StreamConversation(self._core, context, limits=self._limits)
        async with aclosing(conversation.run(request_iterator)) as responses:
            async for response in responses:
                yield response

    @rpc_handler
    async def Generate(  # type: ignore[override]  # writes itself (grpc's coroutine form)
        self, request: pb.GenerateRequest, context: Any
    ) -> None:
        generation = codecs.decode_generation(request, self._limits)
        if generation.session_id:
            SESSION_ID.set(generation.session_id)
        # The engine computes a token only when asked for it, and it is asked only once the
        # previous one was handed to gRPC: nothing runs ahead of the client's flow control. A
        # client that reads nothing for the write timeout ends the call and frees its session.
        # aclosing: when the client cancels, the handler task is cancelled here and the engine's
        # generator is closed at once, so no further token is computed.
        writer = PacedWriter(context, self._write_timeout_s)
        tokens = self._core.generate(generation, identity_of(context))
        try:
            async with aclosing(tokens) as stream:  # type: ignore[type-var]
                async for token in stream:
                    SESSION_ID.set(token.session_id)
                    # The first reply's headers name the session (a new one's later calls route
                    # by it).
                    headers = session_header(token.session_id)
                    if not await writer.write(codecs.encode_token(token), headers=headers):
                        raise ClientNotReading(
                            f"the client read nothing for {writer.timeout_s:g} s "
                            f"(generate_write_timeout_s); generation stopped after token "
                            f"{token.index}, at session step count {token.step_count}"
                        )
        finally:
            writer.close()

    @rpc_handler
    async def CreateSession(
        self, request: pb.CreateSessionRequest, context: Any
    ) -> pb.CreateSessionResponse:
        name, version = codecs.decode_model_ref(request.model, limits=self._limits)
        view = await self._core.create_session(name, version, identity_of(context))
        SESSION_ID.set(view.session_id)
        await announce_session(context, view.session_id)
        return pb.CreateSessionResponse(session=codecs.encode_session(view))

    @rpc_handler
    async def Step(self, request: pb.StepRequest, context: Any) -> pb.StepResponse:
        response = pb.StepResponse()
        await run_step(
            self._core,
            response.result,
            session_id=self._session(request.session_id),
            identity=identity_of(context),
            step_input=request.input,
            input_field="input",
            output=request.output,
            deadline=deadline_of(context),
            expected_step_count=codecs.decode_expected_step_count(request),
            limits=self._limits,
        )
        return response

    @rpc_handler
    async def GetSession(
        self, request: pb.GetSessionRequest, context: Any
    ) -> pb.GetSessionResponse:
        return pb.GetSessionResponse(
            session=await self._on_session(self._core.get_session, request, context)
        )

    @rpc_handler
    async def ResetSession(
        self, request: pb.ResetSessionRequest, context: Any
    ) -> pb.ResetSessionResponse:
        return pb.ResetSessionResponse(
            session=await self._on_session(self._core.reset_session, request, context)
        )

    @rpc_handler
    async def CloseSession(
        self, request: pb.CloseSessionRequest, context: Any
    ) -> pb.CloseSessionResponse:
        return pb.CloseSessionResponse(
            session=await self._on_session(self._core.close_session, request, context)
        )

    @rpc_handler
    async def ExportState(
        self, request: pb.ExportStateRequest, context: Any
    ) -> pb.ExportStateResponse:
        snapshot, view = await self._core.export_state(
            self._session(request.session_id), identity_of(context)
        )
        return pb.ExportStateResponse(snapshot=snapshot, session=codecs.encode_session(view))

    @rpc_handler
    async def ImportState(
        self, request: pb.ImportStateRequest, context: Any
    ) -> pb.ImportStateResponse:
        view = await self._core.import_state(request.snapshot, identity_of(context))
        SESSION_ID.set(view.session_id)
        await announce_session(context, view.session_id)
        return pb.ImportStateResponse(session=codecs.encode_session(view))

    @rpc_handler
    async def Predict(self, request: pb.PredictRequest, context: Any) -> pb.PredictResponse:
        name, version = codecs.decode_model_ref(request.model, limits=self._limits)
        # The caps first, from the counts the request states: a refused Predict costs O(1).
        steps = codecs.check_predict(request.sequences, self._limits)
        options = codecs.decode_output_options(request.output)
        large = is_large(len(request.sequences), steps)
        sequences = await run_sized(large, codecs.decode_sequences, request.sequences, self._limits)
        outcomes = await self._core.predict(name, version, sequences, options)
        response = pb.PredictResponse()
        await run_sized(large, codecs.fill_predict, response, outcomes)
        return response

    @rpc_handler
    async def ListModels(
        self, request: pb.ListModelsRequest, context: Any
    ) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(
            models=[codecs.encode_model(d) for d in self._core.list_models()]
        )

    @rpc_handler
    async def GetModel(self, request: pb.GetModelRequest, context: Any) -> pb.GetModelResponse:
        name, version = codecs.decode_model_ref(request.model, limits=self._limits)
        return pb.GetModelResponse(model=codecs.encode_model(self._core.get_model(name, version)))

    async def _on_session(
        self, operation: Callable[[str, str], Awaitable[SessionView]], request: Any, context: Any
    ) -> pb.SessionInfo:
        """Run a session operation on the request's session for the caller; its description."""
        view = await operation(self._session(request.session_id), identity_of(context))
        return codecs.encode_session(view)

    def _session(self, session_id: str) -> str:
        """Validate a request's session id and put it in the call's log context."""
        SESSION_ID.set(codecs.decode_session_id(session_id, limits=self._limits))
        return session_id
