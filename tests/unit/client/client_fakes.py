"""A fake rnnserve.v1 server (canned, deterministic replies) for the client's unit tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field

import grpc
import numpy as np
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from rnnserve.v1 import rnnserve_pb2 as pb
from rnnserve.v1 import rnnserve_pb2_grpc

VOCABULARY = ["a", "b", "c", "d", "<eos>"]
MODEL = "fake-lm"
BIDIRECTIONAL = "fake-tagger"
MAX_STEPS = 8


def expected_logits(ids: list[int], start: int) -> np.ndarray:
    """The fake model: step n (1-based over the session) with token t gives logits whose argmax is
    (t + 1) % 4 and whose value there is n, so both order and state show in the outputs."""
    rows = np.zeros((len(ids), len(VOCABULARY)), dtype=np.float32)
    for row, token in enumerate(ids):
        rows[row, (token + 1) % 4] = float(start + row + 1)
    return rows


def _model_info(name: str) -> pb.ModelInfo:
    return pb.ModelInfo(
        name=name,
        version=2,
        versions=[1, 2],
        task="language-model" if name == MODEL else "tagger",
        cell="lstm",
        bidirectional=name != MODEL,
        streamable=name == MODEL,
        input_kind="tokens",
        vocabulary=VOCABULARY,
        outputs=[
            pb.OutputInfo(
                name="logits", meaning="logits", shape=[len(VOCABULARY)], labels=VOCABULARY
            )
        ],
        states=[pb.StateInfo(name="h0", shape=[1, 4])],
        state_bytes=16,
        max_steps_per_message=MAX_STEPS,
        metrics={"loss": 1.5},
    )


class FakeError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str, field: str = "") -> None:
        super().__init__(message)
        self.code, self.message, self.field = code, message, field


@dataclass
class FakeState:
    """Everything the fake records, so tests can check what the client sent."""

    sessions: dict[str, int] = field(default_factory=dict)  # id -> step count
    closed: set[str] = field(default_factory=set)
    metadata: list[dict[str, str]] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    unavailable: dict[str, int] = field(default_factory=dict)  # method -> failures left
    delay: dict[str, float] = field(default_factory=dict)  # method -> seconds before replying
    step_requests: list[pb.StepRequest] = field(default_factory=list)
    generate_cancelled: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    next_id: int = 0


def _abort(context: grpc.ServicerContext, error: FakeError) -> None:
    # Rich status like the real transport: a BadRequest naming the field of an invalid argument,
    # and an ErrorInfo whose metadata names the field whatever the code.
    status = status_pb2.Status(code=error.code.value[0], message=error.message)
    if error.field and error.code == grpc.StatusCode.INVALID_ARGUMENT:
        detail = any_pb2.Any()
        detail.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=error.field, description=error.message
                    )
                ]
            )
        )
        status.details.append(detail)
    info = any_pb2.Any()
    info.Pack(
        error_details_pb2.ErrorInfo(
            reason=error.code.name,
            domain="rnnserve.v1",
            metadata={"field": error.field} if error.field else {},
        )
    )
    status.details.append(info)
    if error.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        context.set_trailing_metadata((("retry-after-ms", "250"),))
    context.abort_with_status(rpc_status.to_status(status))


class FakeService(rnnserve_pb2_grpc.InferenceServiceServicer):
    def __init__(self, state: FakeState) -> None:
        self.state = state

    def _enter(self, method: str, context: grpc.ServicerContext) -> None:
        self.state.calls.append(method)
        self.state.metadata.append(dict(context.invocation_metadata()))  # type: ignore[arg-type]
        if self.state.delay.get(method):
            time.sleep(self.state.delay[method])
        left = self.state.unavailable.get(method, 0)
        if left:
            self.state.unavailable[method] = left - 1
            context.abort(grpc.StatusCode.UNAVAILABLE, "try again")

    def _session(self, session_id: str) -> int:
        if session_id in self.state.closed:
            raise FakeError(
                grpc.StatusCode.NOT_FOUND, f"session {session_id!r} was closed", "session_id"
            )
        if session_id not in self.state.sessions:
            raise FakeError(
                grpc.StatusCode.NOT_FOUND, f"session {session_id!r} does not exist", "session_id"
            )
        return self.state.sessions[session_id]

    def _info(self, session_id: str) -> pb.SessionInfo:
        return pb.SessionInfo(
            session_id=session_id,
            model=MODEL,
            version=2,
            step_count=self.state.sessions[session_id],
            created_at=1.0,
            expires_at=2.0,
            state_bytes=16,
        )

    def _new_session(self, count: int = 0) -> str:
        with self.state.lock:
            self.state.next_id += 1
            session_id = f"s{self.state.next_id}"
            self.state.sessions[session_id] = count
        return session_id

    def _ids(self, data: pb.StepInput, prefix: str) -> list[int]:
        if data.HasField("text"):
            ids = []
            for position, char in enumerate(data.text):
                if char not in VOCABULARY:
                    raise FakeError(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"{char!r} is not in the vocabulary",
                        f"{prefix}text[{position}]",
                    )
                ids.append(VOCABULARY.index(char))
        elif data.HasField("tokens"):
            ids = list(data.tokens.ids)
        else:
            raise FakeError(
                grpc.StatusCode.INVALID_ARGUMENT, "features for a token model", f"{prefix}features"
            )
        if not ids:
            raise FakeError(grpc.StatusCode.INVALID_ARGUMENT, "empty input", f"{prefix}tokens.ids")
        if len(ids) > MAX_STEPS:
            raise FakeError(
                grpc.StatusCode.INVALID_ARGUMENT, "too many steps", f"{prefix}tokens.ids"
            )
        for position, token in enumerate(ids):
            if not 0 <= token < len(VOCABULARY):
                raise FakeError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"token id {token} outside [0, {len(VOCABULARY)})",
                    f"{prefix}tokens.ids[{position}]",
                )
        return ids

    def _result(self, ids: list[int], start: int, options: pb.OutputOptions) -> pb.StepResult:
        logits = expected_logits(ids, start)
        if options.steps == pb.OUTPUT_STEPS_LAST:
            logits = logits[-1:]
        argmax = logits.argmax(axis=1)
        output = pb.Output(
            name="logits",
            meaning="logits",
            argmax=argmax.tolist(),
            labels=[VOCABULARY[i] for i in argmax],
        )
        if options.format in (pb.OUTPUT_FORMAT_UNSPECIFIED, pb.OUTPUT_FORMAT_RAW):
            output.tensor.CopyFrom(
                pb.Tensor(
                    dtype=pb.DATA_TYPE_FLOAT32,
                    shape=list(logits.shape),
                    raw_data=logits.astype("<f4").tobytes(),
                )
            )
        elif options.format == pb.OUTPUT_FORMAT_TOP_K:
            k = options.top_k or 5
            for row in logits:
                order = np.argsort(-row, kind="stable")[:k]
                output.top_k.append(
                    pb.TopK(
                        indices=order.tolist(),
                        probabilities=row[order].tolist(),
                        labels=[VOCABULARY[i] for i in order],
                    )
                )
        return pb.StepResult(outputs=[output], steps=len(ids), step_count=start + len(ids))

    def _step(
        self,
        session_id: str,
        data: pb.StepInput,
        options: pb.OutputOptions,
        prefix: str,
        expected: int | None = None,
    ) -> pb.StepResult:
        count = self._session(session_id)
        if expected is not None and expected != count:
            raise FakeError(
                grpc.StatusCode.ABORTED, f"expected step count {expected}, session is at {count}"
            )
        ids = self._ids(data, prefix)
        self.state.sessions[session_id] = count + len(ids)
        return self._result(ids, count, options)

    # --- the RPCs ---------------------------------------------------------------------------

    def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.ServicerContext
    ) -> pb.ListModelsResponse:
        self._enter("ListModels", context)
        return pb.ListModelsResponse(models=[_model_info(MODEL), _model_info(BIDIRECTIONAL)])

    def GetModel(
        self, request: pb.GetModelRequest, context: grpc.ServicerContext
    ) -> pb.GetModelResponse:
        self._enter("GetModel", context)
        if request.model.name not in (MODEL, BIDIRECTIONAL):
            _abort(
                context,
                FakeError(
                    grpc.StatusCode.NOT_FOUND, f"no model {request.model.name!r}", "model.name"
                ),
            )
        return pb.GetModelResponse(model=_model_info(request.model.name))

    def CreateSession(
        self, request: pb.CreateSessionRequest, context: grpc.ServicerContext
    ) -> pb.CreateSessionResponse:
        self._enter("CreateSession", context)
        if request.model.name == BIDIRECTIONAL:
            _abort(
                context,
                FakeError(grpc.StatusCode.FAILED_PRECONDITION, "bidirectional: use Predict"),
            )
        if request.model.name != MODEL:
            _abort(
                context,
                FakeError(
                    grpc.StatusCode.NOT_FOUND, f"no model {request.model.name!r}", "model.name"
                ),
            )
        return pb.CreateSessionResponse(session=self._info(self._new_session()))

    def Step(self, request: pb.StepRequest, context: grpc.ServicerContext) -> pb.StepResponse:
        self._enter("Step", context)
        self.state.step_requests.append(request)
        expected = request.expected_step_count if request.HasField("expected_step_count") else None
        try:
            return pb.StepResponse(
                result=self._step(
                    request.session_id, request.input, request.output, "input.", expected
                )
            )
        except FakeError as error:
            _abort(context, error)
            raise

    def GetSession(
        self, request: pb.GetSessionRequest, context: grpc.ServicerContext
    ) -> pb.GetSessionResponse:
        self._enter("GetSession", context)
        try:
            self._session(request.session_id)
        except FakeError as error:
            _abort(context, error)
        return pb.GetSessionResponse(session=self._info(request.session_id))

    def ResetSession(
        self, request: pb.ResetSessionRequest, context: grpc.ServicerContext
    ) -> pb.ResetSessionResponse:
        self._enter("ResetSession", context)
        self.state.sessions[request.session_id] = 0
        return pb.ResetSessionResponse(session=self._info(request.session_id))

    def CloseSession(
        self, request: pb.CloseSessionRequest, context: grpc.ServicerContext
    ) -> pb.CloseSessionResponse:
        self._enter("CloseSession", context)
        try:
            self._session(request.session_id)
        except FakeError as error:
            _abort(context, error)
        info = self._info(request.session_id)
        self.state.closed.add(request.session_id)
        return pb.CloseSessionResponse(session=info)

    def ExportState(
        self, request: pb.ExportStateRequest, context: grpc.ServicerContext
    ) -> pb.ExportStateResponse:
        self._enter("ExportState", context)
        count = self.state.sessions[request.session_id]
        return pb.ExportStateResponse(
            snapshot=f"snap:{count}".encode(), session=self._info(request.session_id)
        )

    def ImportState(
        self, request: pb.ImportStateRequest, context: grpc.ServicerContext
    ) -> pb.ImportStateResponse:
        self._enter("ImportState", context)
        if not request.snapshot.startswith(b"snap:"):
            _abort(
                context,
                FakeError(grpc.StatusCode.INVALID_ARGUMENT, "corrupted snapshot", "snapshot"),
            )
        count = int(request.snapshot[5:])
        return pb.ImportStateResponse(session=self._info(self._new_session(count)))

    def Predict(
        self, request: pb.PredictRequest, context: grpc.ServicerContext
    ) -> pb.PredictResponse:
        self._enter("Predict", context)
        results = []
        for index, sequence in enumerate(request.sequences):
            try:
                ids = self._ids(sequence, f"sequences[{index}].")
            except FakeError as error:
                _abort(context, error)
            results.append(self._result(ids, 0, request.output))
        return pb.PredictResponse(results=results)

    def Generate(
        self, request: pb.GenerateRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.GenerateResponse]:
        self._enter("Generate", context)
        context.add_callback(self.state.generate_cancelled.set)
        session_id = request.session_id or self._new_session()
        try:
            count = self._session(session_id)
            if request.HasField("text"):
                count += len(self._ids(pb.StepInput(text=request.text), ""))
            elif request.HasField("tokens"):
                count += len(self._ids(pb.StepInput(tokens=request.tokens), ""))
        except FakeError as error:
            _abort(context, error)
        # Deterministic "sampling": the seed picks the first token, then it cycles a, b, c, d.
        seed = request.sampling.seed if request.sampling.HasField("seed") else 0
        text = ""
        for index in range(request.max_tokens):
            token = (seed + index) % 4
            count += 1
            self.state.sessions[session_id] = count
            text += VOCABULARY[token]
            stop = any(s in text for s in request.stop)
            last = stop or index == request.max_tokens - 1
            reason = (pb.FINISH_REASON_STOP if stop else pb.FINISH_REASON_LENGTH) if last else 0
            yield pb.GenerateResponse(
                session_id=session_id,
                token_id=token,
                text=VOCABULARY[token],
                index=index,
                finish_reason=reason,
                step_count=count,
            )
            if last:
                break
        if request.close_session:
            self.state.closed.add(session_id)

    def Stream(
        self, request_iterator: Iterator[pb.StreamRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.StreamResponse]:
        self._enter("Stream", context)
        session_id = ""
        for request in request_iterator:
            try:
                if request.HasField("open"):
                    if request.open.HasField("session_id"):
                        self._session(request.open.session_id)
                        session_id = request.open.session_id
                    else:
                        session_id = self._new_session()
                    yield pb.StreamResponse(
                        request_id=request.request_id, session=self._info(session_id)
                    )
                elif request.HasField("step"):
                    result = self._step(session_id, request.step, request.output, "step.")
                    yield pb.StreamResponse(request_id=request.request_id, result=result)
                elif request.control == pb.CONTROL_ACTION_RESET:
                    self.state.sessions[session_id] = 0
                    yield pb.StreamResponse(
                        request_id=request.request_id, session=self._info(session_id)
                    )
                elif request.control == pb.CONTROL_ACTION_SNAPSHOT:
                    yield pb.StreamResponse(request_id=request.request_id, snapshot=b"snap:0")
            except FakeError as error:
                yield pb.StreamResponse(
                    request_id=request.request_id,
                    error=pb.Error(
                        code=error.code.value[0],
                        code_name=error.code.name,
                        message=error.message,
                        field=error.field,
                    ),
                )


@dataclass
class FakeServer:
    target: str
    state: FakeState


def start_fake_server() -> tuple[grpc.Server, FakeServer]:
    """Start a fake rnnserve server on 127.0.0.1:<free port>."""
    state = FakeState()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    rnnserve_pb2_grpc.add_InferenceServiceServicer_to_server(FakeService(state), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, FakeServer(target=f"127.0.0.1:{port}", state=state)
