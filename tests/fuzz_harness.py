"""Sends fuzz cases to a live rnnserve server and sorts the answers: clean codes, INTERNAL or
UNKNOWN, and hangs.

`build_seeds` makes valid requests of every method of both front doors from the models the
server describes (plus the sessions, sequence and snapshot it opens for the fuzzing identity);
`Fuzzer.send` sends one case (a unary call, a server stream read to its end, or one message on
a long-lived Stream or ModelStreamInfer call) and `Tally` counts what came back. `draw_cases`
runs a hypothesis strategy (tests/fuzz_mutations.py) to a list of cases.

Shared by tests/integration/test_fuzz.py (bounded) and bench/fuzz.py (the long run).
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
from fuzz_mutations import Case, Seed
from google.protobuf.descriptor import MethodDescriptor
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from rnnserve.kserve.v2 import grpc_service_pb2 as kpb
from rnnserve.v1 import rnnserve_pb2 as pb
from rnnserve.v1 import rnnserve_pb2_grpc

RNNSERVE = pb.DESCRIPTOR.services_by_name["InferenceService"]
KSERVE = kpb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
BAD_CODES = frozenset({"INTERNAL", "UNKNOWN"})
HANG = "HANG"  # no answer before the per-call deadline
IN_BAND_ERROR = "IN_BAND_ERROR"  # a KServe stream error (error_message carries no code)
INTERNAL_PREFIX = "internal error"  # the message of every INTERNAL (transport/errors.py)


def methods() -> dict[str, MethodDescriptor]:
    """Every method of both front doors by target name ("package.Service/Method")."""
    return {f"{s.full_name}/{m.name}": m for s in (RNNSERVE, KSERVE) for m in s.methods}


# ---- seeds: a valid request of every method -------------------------------------------------


async def build_seeds(
    channel: grpc.aio.Channel, metadata: Sequence[tuple[str, str]]
) -> tuple[list[Seed], list[str]]:
    """Valid requests of every method of both front doors, and strings worth trying in fields.

    Opens, for the caller `metadata` names, a session per streamable model, one to close, one
    KServe sequence per streamable model, and exports one snapshot.
    """
    stub = rnnserve_pb2_grpc.InferenceServiceStub(channel)
    models = list((await stub.ListModels(pb.ListModelsRequest(), metadata=metadata)).models)
    seeds = _stateless_seeds(models)
    strings = [m.name for m in models] + [str(v) for m in models for v in m.versions]
    for model in models:
        if not model.streamable:
            continue
        session_id = await _open(stub, model.name, metadata)
        seeds += _session_seeds(model, session_id)
        started = _infer(model, sequence=f"fuzz-{model.name}", start=True)
        await channel.unary_unary(f"/{KSERVE.full_name}/ModelInfer")(
            started.SerializeToString(), metadata=metadata
        )
        continuing = _infer(model, sequence=f"fuzz-{model.name}")
        seeds += _kserve_seeds(f"continue sequence on {model.name}", continuing)
    streamable = [m for m in models if m.streamable]
    if streamable:
        model = streamable[0]
        seeds.append(
            _seed(
                RNNSERVE,
                "CloseSession",
                pb.CloseSessionRequest(session_id=await _open(stub, model.name, metadata)),
                "close a session",
            )
        )
        exported = await stub.ExportState(
            pb.ExportStateRequest(session_id=await _open(stub, model.name, metadata)),
            metadata=metadata,
        )
        seeds.append(
            _seed(
                RNNSERVE,
                "ImportState",
                pb.ImportStateRequest(snapshot=exported.snapshot),
                "import a snapshot",
            )
        )
        seeds.append(
            _stream_seed(
                pb.StreamRequest(open=pb.OpenSession(snapshot=exported.snapshot)),
                "open from a snapshot",
                model.name,
                fresh=True,
            )
        )
    assert {s.target for s in seeds} >= set(methods()), "a method has no seed"
    return seeds, strings


def _stateless_seeds(models: list[pb.ModelInfo]) -> list[Seed]:
    seeds = [
        _seed(RNNSERVE, "ListModels", pb.ListModelsRequest(), "list models"),
        _seed(KSERVE, "ServerLive", kpb.ServerLiveRequest(), "live"),
        _seed(KSERVE, "ServerReady", kpb.ServerReadyRequest(), "ready"),
        _seed(KSERVE, "ServerMetadata", kpb.ServerMetadataRequest(), "server metadata"),
        _seed(KSERVE, "ModelStatistics", kpb.ModelStatisticsRequest(), "all statistics"),
    ]
    for model in models:
        name, ref = model.name, pb.ModelRef(name=model.name)
        inputs = valid_inputs(model)
        seeds.append(_seed(RNNSERVE, "GetModel", pb.GetModelRequest(model=ref), f"get {name}"))
        seeds.append(
            _seed(RNNSERVE, "CreateSession", pb.CreateSessionRequest(model=ref), f"create {name}")
        )
        seeds.append(
            _seed(
                RNNSERVE,
                "Predict",
                pb.PredictRequest(
                    model=ref,
                    sequences=[data for _, data in inputs],
                    output=pb.OutputOptions(format=pb.OUTPUT_FORMAT_TOP_K, top_k=2),
                ),
                f"predict {name}",
            )
        )
        for method, message in (
            ("ModelReady", kpb.ModelReadyRequest(name=name)),
            ("ModelMetadata", kpb.ModelMetadataRequest(name=name, version="")),
            ("ModelConfig", kpb.ModelConfigRequest(name=name)),
            ("ModelStatistics", kpb.ModelStatisticsRequest(name=name, version="1")),
        ):
            seeds.append(_seed(KSERVE, method, message, f"{method} {name}"))
        if model.streamable:
            seeds += _kserve_seeds(
                f"start a sequence on {name}", _infer(model, sequence=7, start=True, end=True)
            )
            seeds.append(
                _stream_seed(
                    pb.StreamRequest(open=pb.OpenSession(model=ref)),
                    f"open {name}",
                    name,
                    fresh=True,
                )
            )
        else:
            seeds += _kserve_seeds(f"stateless {name}", _infer(model))
        if model.task == "language-model":
            seeds.append(
                _seed(
                    RNNSERVE,
                    "Generate",
                    pb.GenerateRequest(
                        model=ref,
                        tokens=pb.TokenIds(ids=[1, 2]),
                        max_tokens=4,
                        stop=["a"],
                        sampling=pb.SamplingParams(temperature=0.8, top_k=3, top_p=0.9, seed=1),
                        close_session=True,
                    ),
                    f"generate on a new {name} session",
                )
            )
    return seeds


def _session_seeds(model: pb.ModelInfo, session_id: str) -> list[Seed]:
    name = model.name
    seeds = [
        _seed(RNNSERVE, method, message(session_id=session_id), f"{method} of a {name} session")
        for method, message in (
            ("GetSession", pb.GetSessionRequest),
            ("ResetSession", pb.ResetSessionRequest),
            ("ExportState", pb.ExportStateRequest),
        )
    ]
    options = (
        pb.OutputOptions(),
        pb.OutputOptions(steps=pb.OUTPUT_STEPS_LAST, format=pb.OUTPUT_FORMAT_PROBABILITIES),
        pb.OutputOptions(format=pb.OUTPUT_FORMAT_TOP_K, top_k=3),
    )
    for (label, data), output in zip(valid_inputs(model), options, strict=False):
        seeds.append(
            _seed(
                RNNSERVE,
                "Step",
                pb.StepRequest(session_id=session_id, input=data, output=output),
                f"step {label} on {name}",
            )
        )
        seeds.append(
            _stream_seed(
                pb.StreamRequest(request_id="r", step=data, output=output),
                f"stream step {label} on {name}",
                name,
            )
        )
    for action in (pb.CONTROL_ACTION_RESET, pb.CONTROL_ACTION_SNAPSHOT, pb.CONTROL_ACTION_CLOSE):
        seeds.append(
            _stream_seed(
                pb.StreamRequest(control=action), f"stream control {action} on {name}", name
            )
        )
    if model.task == "language-model":
        seeds.append(
            _seed(
                RNNSERVE,
                "Generate",
                pb.GenerateRequest(session_id=session_id, text=_text(model), max_tokens=3),
                f"generate on a {name} session",
            )
        )
    return seeds


def valid_inputs(model: pb.ModelInfo) -> list[tuple[str, pb.StepInput]]:
    """Valid inputs for `model`: ids and text, or feature frames."""
    if model.input_kind == "features":
        frames = np.linspace(-1, 1, 3 * model.feature_width, dtype="<f4")
        tensor = pb.Tensor(
            dtype=pb.DATA_TYPE_FLOAT32, shape=[3, model.feature_width], raw_data=frames.tobytes()
        )
        return [("frames", pb.StepInput(features=tensor))]
    size = max(1, len(model.vocabulary))
    ids = [i % size for i in (1, 2, 3)]
    return [
        ("ids", pb.StepInput(tokens=pb.TokenIds(ids=ids))),
        ("text", pb.StepInput(text=_text(model))),
    ]


def _text(model: pb.ModelInfo) -> str:
    words = [w for w in model.vocabulary[:6] if w.strip()][:3] or ["a"]
    return ("" if all(len(w) == 1 for w in words) else " ").join(words)


def _infer(
    model: pb.ModelInfo,
    *,
    sequence: str | int | None = None,
    start: bool = False,
    end: bool = False,
) -> kpb.ModelInferRequest:
    """A valid KServe request for `model`: raw contents, sequence parameters when given."""
    message = kpb.ModelInferRequest(model_name=model.name, id="fuzz")
    if model.input_kind == "features":
        data = np.linspace(-1, 1, 2 * model.feature_width, dtype="<f4")
        message.inputs.add(name="features", datatype="FP32", shape=[1, 2, model.feature_width])
    else:
        data = np.asarray([1, 2], "<i8") % max(1, len(model.vocabulary))
        message.inputs.add(name="tokens", datatype="INT64", shape=[1, 2])
    message.raw_input_contents.append(data.tobytes())
    if isinstance(sequence, str):
        message.parameters["sequence_id"].string_param = sequence
    elif sequence is not None:
        message.parameters["sequence_id"].int64_param = sequence
    if sequence is not None:
        message.parameters["sequence_start"].bool_param = start
        message.parameters["sequence_end"].bool_param = end
        message.parameters["output_steps"].string_param = "last"
    message.outputs.add(name="logits" if model.task != "regressor" else "value")
    return message


def _kserve_seeds(name: str, message: kpb.ModelInferRequest) -> list[Seed]:
    return [
        _seed(KSERVE, "ModelInfer", message, name),
        Seed(f"{KSERVE.full_name}/ModelStreamInfer", message, f"in-stream {name}"),
    ]


def _seed(service: Any, method: str, message: Any, name: str) -> Seed:
    return Seed(f"{service.full_name}/{method}", message, name)


def _stream_seed(message: pb.StreamRequest, name: str, model: str, fresh: bool = False) -> Seed:
    return Seed(f"{RNNSERVE.full_name}/Stream", message, name, model, fresh)


async def _open(
    stub: rnnserve_pb2_grpc.InferenceServiceStub, model: str, metadata: Sequence[tuple[str, str]]
) -> str:
    reply = await stub.CreateSession(
        pb.CreateSessionRequest(model=pb.ModelRef(name=model)), metadata=metadata
    )
    return str(reply.session.session_id)


# ---- generating cases -----------------------------------------------------------------------


def draw_cases(strategy: st.SearchStrategy[Case], count: int, seed: int) -> list[Case]:
    """`count` cases (at most) drawn by hypothesis from `strategy`, the same for the same seed."""
    cases: list[Case] = []

    @settings(
        max_examples=count,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @hypothesis_seed(seed)
    @given(strategy)
    def collect(case: Case) -> None:
        cases.append(case)

    collect()
    return cases


# ---- sending --------------------------------------------------------------------------------


@dataclass
class Tally:
    """What came back, by method and code; the cases that were INTERNAL, UNKNOWN or hung."""

    codes: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    bad: list[str] = field(default_factory=list)

    def add(self, case: Case, code: str) -> None:
        self.codes[case.target][code] += 1
        if code in BAD_CODES or code == HANG:
            self.bad.append(f"{code}: {case.reproducer()}")

    @property
    def cases(self) -> int:
        return sum(sum(counter.values()) for counter in self.codes.values())

    def count(self, *codes: str) -> int:
        return sum(counter[code] for counter in self.codes.values() for code in codes)

    def by_code(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for counter in self.codes.values():
            total.update(counter)
        return total

    def table(self) -> str:
        """Cases per method and the codes they got, as a text table."""
        codes = sorted(self.by_code())
        width = max([len(t) for t in self.codes] + [6])
        lines = [f"{'method':<{width}}  {'cases':>6}  " + "  ".join(codes)]
        for target in sorted(self.codes):
            counter = self.codes[target]
            cells = "  ".join(f"{counter[c]:>{len(c)}}" for c in codes)
            lines.append(f"{target:<{width}}  {sum(counter.values()):>6}  {cells}")
        return "\n".join(lines)


@dataclass
class _StreamLine:
    """One long-lived bidirectional call the messages of a stream target go on."""

    call: Any
    kserve: bool  # ModelStreamInfer (replies are ModelStreamInferResponse), else Stream


class Fuzzer:
    """Sends cases over `channel` as the caller `metadata` names, each within `timeout_s`."""

    def __init__(
        self, channel: grpc.aio.Channel, metadata: Sequence[tuple[str, str]], timeout_s: float
    ) -> None:
        self._channel = channel
        self._metadata = tuple(metadata)
        self._timeout = timeout_s
        self._methods = methods()
        self._streams: dict[tuple[str, str], _StreamLine] = {}

    async def send(self, case: Case) -> str:
        """Send one case; the status code name it got (in-band ones too), or HANG."""
        method = self._methods[case.target]
        path = f"/{case.target}"
        if method.client_streaming:
            return await self._in_stream(case)
        try:
            if method.server_streaming:
                call = self._channel.unary_stream(path)(
                    case.body, timeout=self._timeout, metadata=self._metadata
                )
                async for _ in call:
                    pass
            else:
                await self._channel.unary_unary(path)(
                    case.body, timeout=self._timeout, metadata=self._metadata
                )
        except grpc.aio.AioRpcError as err:
            return _code(err.code())
        return "OK"

    async def close(self) -> None:
        """End the long-lived streams."""
        for line in self._streams.values():
            line.call.cancel()
        self._streams.clear()

    async def _in_stream(self, case: Case) -> str:
        key = (case.target, case.stream_key)
        line = self._streams.get(key)
        if line is None or case.fresh_stream:
            line = await self._start(key, bind=not case.fresh_stream)
        code = await self._exchange(line, case.body)
        if code is None:  # the stream had ended (a close before): once more on a new stream
            line = await self._start(key, bind=not case.fresh_stream)
            code = await self._exchange(line, case.body)
        if code is None:
            code = _code(await line.call.code())
            self._streams.pop(key, None)
        if code == HANG:
            line.call.cancel()
            self._streams.pop(key, None)
        elif case.fresh_stream and key[0] == f"{RNNSERVE.full_name}/Stream":
            await self._exchange(line, _open_message(case.stream_key))  # bind it for what follows
        return code

    async def _start(self, key: tuple[str, str], *, bind: bool) -> _StreamLine:
        old = self._streams.pop(key, None)
        if old is not None:
            old.call.cancel()
        call = self._channel.stream_stream(f"/{key[0]}")(metadata=self._metadata)
        line = _StreamLine(call, kserve=key[0].startswith(KSERVE.full_name))
        self._streams[key] = line
        if bind and key[0] == f"{RNNSERVE.full_name}/Stream":
            await self._exchange(line, _open_message(key[1]))
        return line

    async def _exchange(self, line: _StreamLine, body: bytes) -> str | None:
        """Write one message and read its reply: its code, HANG, or None if the stream ended."""
        try:
            await line.call.write(body)
            reply = await asyncio.wait_for(line.call.read(), self._timeout)
        except TimeoutError:
            return HANG
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError):
            return None
        if reply is grpc.aio.EOF:
            return None
        return _in_band_code(line, reply)


def _open_message(model: str) -> bytes:
    return pb.StreamRequest(open=pb.OpenSession(model=pb.ModelRef(name=model))).SerializeToString()


def _in_band_code(line: _StreamLine, reply: bytes) -> str:
    """The code of a stream reply: OK, the in-band error's code, or IN_BAND_ERROR (KServe)."""
    if line.kserve:
        answer = kpb.ModelStreamInferResponse.FromString(reply)
        if not answer.error_message:
            return "OK"
        if answer.error_message.startswith(INTERNAL_PREFIX):
            return "INTERNAL"
        return IN_BAND_ERROR
    response = pb.StreamResponse.FromString(reply)
    return response.error.code_name if response.WhichOneof("kind") == "error" else "OK"


def _code(code: grpc.StatusCode) -> str:
    return HANG if code == grpc.StatusCode.DEADLINE_EXCEEDED else str(code.name)


def server_failures() -> int:
    """INTERNAL and UNKNOWN answers the in-process server counted (calls and stream messages)."""
    from rnnserve.server.metrics import REQUESTS

    return int(
        sum(
            sample.value
            for metric in REQUESTS.collect()
            for sample in metric.samples
            if sample.name.endswith("_total") and sample.labels.get("code") in BAD_CODES
        )
    )
