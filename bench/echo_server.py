"""A trivial InferenceService answering at once with replies of the real size: the transport floor.

It keeps no state and runs no model: each step reply carries `steps x logits` float32 zeros, an
argmax and a one-character label per step, byte for byte the size of the char-lstm's reply, so
driving it with the same load shows what gRPC and Python alone cost. Benchmark-only: run it with
`python bench/echo_server.py --port N`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import uuid
from collections.abc import AsyncIterator

import grpc
from rnnserve.v1 import rnnserve_pb2 as pb
from rnnserve.v1 import rnnserve_pb2_grpc as pb_grpc

LOGITS = 100


class EchoService(pb_grpc.InferenceServiceServicer):
    """Stream, Step, Generate and the session calls, answered without a model."""

    def __init__(self, logits: int = LOGITS) -> None:
        self.logits = logits
        self._results: dict[tuple[int, bool], pb.StepResult] = {}

    def _result(self, steps: int, output: pb.OutputOptions) -> pb.StepResult:
        last = output.steps == pb.OUTPUT_STEPS_LAST
        rows = 1 if last else steps
        key = (rows, output.format == pb.OUTPUT_FORMAT_NONE)
        if key not in self._results:  # replies are cached: building them is not the floor's job
            tensor = None
            if not key[1]:
                tensor = pb.Tensor(
                    dtype=pb.DATA_TYPE_FLOAT32,
                    shape=[rows, self.logits],
                    raw_data=bytes(4 * rows * self.logits),
                )
            self._results[key] = pb.StepResult(
                outputs=[
                    pb.Output(
                        name="logits",
                        meaning="logits",
                        tensor=tensor,
                        argmax=[0] * rows,
                        labels=["a"] * rows,
                    )
                ]
            )
        result = pb.StepResult()
        result.CopyFrom(self._results[key])
        result.steps = steps
        return result

    @staticmethod
    def _steps(data: pb.StepInput) -> int:
        kind = data.WhichOneof("data")
        if kind == "tokens":
            return len(data.tokens.ids)
        if kind == "features":
            return int(data.features.shape[0]) if data.features.shape else 0
        return len(data.text)

    @staticmethod
    def _session(session_id: str = "") -> pb.SessionInfo:
        return pb.SessionInfo(session_id=session_id or uuid.uuid4().hex, model="echo", version=1)

    async def Stream(
        self, request_iterator: AsyncIterator[pb.StreamRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StreamResponse]:
        count = 0
        async for request in request_iterator:
            kind = request.WhichOneof("kind")
            if kind == "step":
                result = self._result(self._steps(request.step), request.output)
                count += result.steps
                result.step_count = count
                yield pb.StreamResponse(request_id=request.request_id, result=result)
            elif kind == "control" and request.control == pb.CONTROL_ACTION_CLOSE:
                yield pb.StreamResponse(request_id=request.request_id, session=self._session())
                return
            else:
                yield pb.StreamResponse(request_id=request.request_id, session=self._session())

    async def Step(
        self, request: pb.StepRequest, context: grpc.aio.ServicerContext
    ) -> pb.StepResponse:
        return pb.StepResponse(result=self._result(self._steps(request.input), request.output))

    async def Predict(
        self, request: pb.PredictRequest, context: grpc.aio.ServicerContext
    ) -> pb.PredictResponse:
        return pb.PredictResponse(
            results=[self._result(self._steps(item), request.output) for item in request.sequences]
        )

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateResponse]:
        session_id = request.session_id or uuid.uuid4().hex
        for index in range(request.max_tokens):
            last = index == request.max_tokens - 1
            yield pb.GenerateResponse(
                session_id=session_id,
                token_id=0,
                text="a",
                index=index,
                step_count=index + 1,
                finish_reason=pb.FINISH_REASON_LENGTH if last else pb.FINISH_REASON_UNSPECIFIED,
            )

    async def CreateSession(
        self, request: pb.CreateSessionRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateSessionResponse:
        return pb.CreateSessionResponse(session=self._session())

    async def CloseSession(
        self, request: pb.CloseSessionRequest, context: grpc.aio.ServicerContext
    ) -> pb.CloseSessionResponse:
        return pb.CloseSessionResponse(session=self._session(request.session_id))

    async def GetSession(
        self, request: pb.GetSessionRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetSessionResponse:
        return pb.GetSessionResponse(session=self._session(request.session_id))

    async def ResetSession(
        self, request: pb.ResetSessionRequest, context: grpc.aio.ServicerContext
    ) -> pb.ResetSessionResponse:
        return pb.ResetSessionResponse(session=self._session(request.session_id))

    async def ExportState(
        self, request: pb.ExportStateRequest, context: grpc.aio.ServicerContext
    ) -> pb.ExportStateResponse:
        # The echo server holds no state: its snapshot is the session id alone.
        session = self._session(request.session_id)
        return pb.ExportStateResponse(snapshot=session.session_id.encode(), session=session)

    async def ImportState(
        self, request: pb.ImportStateRequest, context: grpc.aio.ServicerContext
    ) -> pb.ImportStateResponse:
        return pb.ImportStateResponse(session=self._session())

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=[self._model("echo")])

    def _model(self, name: str) -> pb.ModelInfo:
        return pb.ModelInfo(
            name=name,
            version=1,
            versions=[1],
            task="language-model",
            cell="lstm",
            streamable=True,
            input_kind="tokens",
            vocabulary=[chr(32 + i) for i in range(self.logits)],
            outputs=[pb.OutputInfo(name="logits", meaning="logits", shape=[self.logits])],
            max_steps_per_message=4096,
        )

    async def GetModel(
        self, request: pb.GetModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetModelResponse:
        return pb.GetModelResponse(model=self._model(request.model.name or "echo"))


async def start_echo_server(
    host: str = "127.0.0.1", port: int = 0, logits: int = LOGITS
) -> tuple[grpc.aio.Server, int]:
    """Start the echo server (replies of `logits` float32 per step); returns it and its port."""
    server = grpc.aio.server()
    pb_grpc.add_InferenceServiceServicer_to_server(EchoService(logits), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    return server, bound


async def _serve(host: str, port: int, logits: int) -> None:
    server, bound = await start_echo_server(host, port, logits)
    print(f"echo server listening on {host}:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1.0)


def main(argv: list[str] | None = None) -> None:
    """Run the echo server until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=50052)
    parser.add_argument(
        "--logits", type=int, default=LOGITS, help=f"float32 values per step reply ({LOGITS})"
    )
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.host, args.port, args.logits))


if __name__ == "__main__":
    main()
