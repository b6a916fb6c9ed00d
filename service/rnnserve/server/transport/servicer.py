"""rnnserve.v1.InferenceService over the engine: each handler decodes, calls the core, encodes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from rnnserve.server.engine import InferenceEngine
from rnnserve.server.errors import InvalidInput, RnnServeError
from rnnserve.server.logging import SESSION_ID
from rnnserve.server.transport import codecs
from rnnserve.server.transport.context import deadline_of, identity_of
from rnnserve.server.transport.errors import rpc_handler
from rnnserve.server.transport.stream import StreamConversation
from rnnserve.v1 import rnnserve_pb2 as pb
from rnnserve.v1 import rnnserve_pb2_grpc


class InferenceServicer(rnnserve_pb2_grpc.InferenceServiceServicer):
    """The gRPC face of one InferenceEngine; holds no state of its own."""

    def __init__(self, engine: InferenceEngine) -> None:
        self._engine = engine

    @rpc_handler
    async def Stream(
        self, request_iterator: AsyncIterator[pb.StreamRequest], context: Any
    ) -> AsyncIterator[pb.StreamResponse]:
        conversation = StreamConversation(self._engine, context)
        async with aclosing(conversation.run(request_iterator)) as responses:
            async for response in responses:
                yield response

    @rpc_handler
    async def Generate(
        self, request: pb.GenerateRequest, context: Any
    ) -> AsyncIterator[pb.GenerateResponse]:
        generation = codecs.decode_generation(request)
        if generation.session_id:
            SESSION_ID.set(generation.session_id)
        # aclosing: when the client cancels, the handler task is cancelled here and the engine's
        # generator is closed at once, so no further token is computed.
        tokens = self._engine.generate(generation, identity_of(context))
        async with aclosing(tokens) as stream:  # type: ignore[type-var]
            async for token in stream:
                SESSION_ID.set(token.session_id)
                yield codecs.encode_token(token)

    @rpc_handler
    async def CreateSession(
        self, request: pb.CreateSessionRequest, context: Any
    ) -> pb.CreateSessionResponse:
        name, version = codecs.decode_model_ref(request.model)
        view = await self._engine.create_session(name, version, identity_of(context))
        SESSION_ID.set(view.session_id)
        return pb.CreateSessionResponse(session=codecs.encode_session(view))

    @rpc_handler
    async def Step(self, request: pb.StepRequest, context: Any) -> pb.StepResponse:
        session_id = _session(request.session_id)
        data = codecs.decode_input(request.input, "input")
        options = codecs.decode_output_options(request.output)
        expected = (
            int(request.expected_step_count) if request.HasField("expected_step_count") else None
        )
        try:
            outcome = await self._engine.step(
                session_id,
                identity_of(context),
                data,
                options,
                expected_step_count=expected,
                deadline=deadline_of(context),
            )
        except RnnServeError as err:
            raise codecs.request_field(err, "input") from None
        response = pb.StepResponse()
        codecs.fill_step(response.result, outcome)
        return response

    @rpc_handler
    async def GetSession(
        self, request: pb.GetSessionRequest, context: Any
    ) -> pb.GetSessionResponse:
        view = await self._engine.get_session(_session(request.session_id), identity_of(context))
        return pb.GetSessionResponse(session=codecs.encode_session(view))

    @rpc_handler
    async def ResetSession(
        self, request: pb.ResetSessionRequest, context: Any
    ) -> pb.ResetSessionResponse:
        view = await self._engine.reset_session(_session(request.session_id), identity_of(context))
        return pb.ResetSessionResponse(session=codecs.encode_session(view))

    @rpc_handler
    async def CloseSession(
        self, request: pb.CloseSessionRequest, context: Any
    ) -> pb.CloseSessionResponse:
        view = await self._engine.close_session(_session(request.session_id), identity_of(context))
        return pb.CloseSessionResponse(session=codecs.encode_session(view))

    @rpc_handler
    async def ExportState(
        self, request: pb.ExportStateRequest, context: Any
    ) -> pb.ExportStateResponse:
        snapshot, view = await self._engine.export_state(
            _session(request.session_id), identity_of(context)
        )
        return pb.ExportStateResponse(snapshot=snapshot, session=codecs.encode_session(view))

    @rpc_handler
    async def ImportState(
        self, request: pb.ImportStateRequest, context: Any
    ) -> pb.ImportStateResponse:
        view = await self._engine.import_state(request.snapshot, identity_of(context))
        SESSION_ID.set(view.session_id)
        return pb.ImportStateResponse(session=codecs.encode_session(view))

    @rpc_handler
    async def Predict(self, request: pb.PredictRequest, context: Any) -> pb.PredictResponse:
        name, version = codecs.decode_model_ref(request.model)
        if not request.sequences:
            raise InvalidInput("at least one sequence is required", field="sequences")
        sequences = [
            codecs.decode_input(sequence, f"sequences[{i}]")
            for i, sequence in enumerate(request.sequences)
        ]
        options = codecs.decode_output_options(request.output)
        try:
            outcomes = await self._engine.predict(name, version, sequences, options)
        except RnnServeError as err:
            raise codecs.request_field(err) from None  # the core names sequences[i] itself
        return pb.PredictResponse(results=[codecs.encode_step(o) for o in outcomes])

    @rpc_handler
    async def ListModels(
        self, request: pb.ListModelsRequest, context: Any
    ) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(
            models=[codecs.encode_model(d) for d in self._engine.list_models()]
        )

    @rpc_handler
    async def GetModel(self, request: pb.GetModelRequest, context: Any) -> pb.GetModelResponse:
        name, version = codecs.decode_model_ref(request.model)
        return pb.GetModelResponse(model=codecs.encode_model(self._engine.get_model(name, version)))


def _session(session_id: str) -> str:
    """Validate a request's session id and put it in the call's log context."""
    SESSION_ID.set(codecs.decode_session_id(session_id))
    return session_id
