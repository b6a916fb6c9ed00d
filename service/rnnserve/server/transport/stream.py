"""One `Stream` call: opens or resumes its session, then answers each message, errors in-band."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from rnnserve.server.core import InferenceCore
from rnnserve.server.domain import SessionView
from rnnserve.server.errors import InvalidInput, RnnServeError, SessionNotFound, ShuttingDown
from rnnserve.server.logs import SESSION_ID
from rnnserve.server.transport import codecs
from rnnserve.server.transport.context import deadline_of, identity_of
from rnnserve.server.transport.errors import StreamProtocolError, inband_error, report
from rnnserve.server.transport.observe import record_call
from rnnserve.server.transport.steps import run_step
from rnnserve.v1 import rnnserve_pb2 as pb

log = logging.getLogger(__name__)


class StreamConversation:
    """The state of one Stream call: which session it is bound to, and whether that still lives.

    Messages are handled strictly one after another, so a stream never races itself; a message's
    error becomes its in-band reply and the session's state stays as it was. Only a server
    shutdown ends the stream with a status (UNAVAILABLE), so the client reconnects elsewhere.
    """

    def __init__(self, core: InferenceCore, context: Any) -> None:
        self._core = core
        self._context = context
        self._identity = identity_of(context)
        self._session_id: str | None = None
        self._session_gone = False  # the core said the session no longer exists
        self.finished = False  # set once the session is closed: the server then ends the stream

    async def run(
        self, requests: AsyncIterator[pb.StreamRequest]
    ) -> AsyncGenerator[pb.StreamResponse, None]:
        """Answer every request in order, exactly one response each."""
        async for request in requests:
            yield await self.answer(request)
            if self.finished:
                return

    async def answer(self, request: pb.StreamRequest) -> pb.StreamResponse:
        """Handle one message; a failure becomes an in-band error reply."""
        kind = request.WhichOneof("kind") or "empty"
        started, code = time.perf_counter(), "OK"
        try:
            response = await self._dispatch(kind, request)
        except ShuttingDown:
            record_call(f"Stream.{kind}", "UNAVAILABLE", time.perf_counter() - started)
            raise
        except Exception as err:
            if isinstance(err, SessionNotFound) and err.session_id == self._session_id:
                self._session_gone = True  # steps keep saying why; `open` may bind a new one
            failure = report(err, f"Stream.{kind}")
            code = failure.code_name
            response = pb.StreamResponse(error=inband_error(failure))
        record_call(f"Stream.{kind}", code, time.perf_counter() - started)
        response.request_id = request.request_id
        return response

    async def _dispatch(self, kind: str, request: pb.StreamRequest) -> pb.StreamResponse:
        if kind == "open":
            return await self._open(request.open)
        session_id = self._require_session(kind)
        if kind == "step":
            response = pb.StreamResponse()
            await run_step(
                self._core,
                response.result,
                session_id=session_id,
                identity=self._identity,
                step_input=request.step,
                input_field="step",
                output=request.output,
                deadline=deadline_of(self._context),
            )
            return response
        return await self._control(session_id, request.control)

    async def _open(self, message: pb.OpenSession) -> pb.StreamResponse:
        if self._session_id is not None and not self._session_gone:
            raise StreamProtocolError(
                "this stream already has a session; open must be the stream's first message",
                field="open",
            )
        try:
            view = await self._bind(message)
        except ShuttingDown:
            raise
        except RnnServeError as err:
            raise err.with_field_prefix("open") from None  # "model.name" -> "open.model.name"
        self._session_id, self._session_gone = view.session_id, False
        SESSION_ID.set(view.session_id)
        log.info("stream bound to session", extra={"model": view.model, "version": view.version})
        return pb.StreamResponse(session=codecs.encode_session(view))

    async def _bind(self, message: pb.OpenSession) -> SessionView:
        source = message.WhichOneof("source")
        if source == "model":
            name, version = codecs.decode_model_ref(message.model)
            return await self._core.create_session(name, version, self._identity)
        if source == "session_id":
            session_id = codecs.decode_session_id(message.session_id)
            return await self._core.get_session(session_id, self._identity)
        if source == "snapshot":
            return await self._core.import_state(message.snapshot, self._identity)
        raise InvalidInput("one of model, session_id or snapshot must be set", field="")

    async def _control(self, session_id: str, action: int) -> pb.StreamResponse:
        if action == pb.CONTROL_ACTION_RESET:
            view = await self._core.reset_session(session_id, self._identity)
            return pb.StreamResponse(session=codecs.encode_session(view))
        if action == pb.CONTROL_ACTION_SNAPSHOT:
            snapshot, _ = await self._core.export_state(session_id, self._identity)
            return pb.StreamResponse(snapshot=snapshot)
        if action == pb.CONTROL_ACTION_CLOSE:
            view = await self._core.close_session(session_id, self._identity)
            self._session_id, self.finished = None, True
            return pb.StreamResponse(session=codecs.encode_session(view))
        raise InvalidInput(f"unknown control action {action}", field="control")

    def _require_session(self, kind: str) -> str:
        if kind == "empty":
            raise InvalidInput("one of open, step or control must be set", field="kind")
        if self._session_id is None:
            raise StreamProtocolError(
                "no session is open on this stream: send an open message first", field=kind
            )
        return self._session_id
