"""Checks a running rnnserve container from the host against an in-process onnxruntime run.

Called by scripts/container_test.sh (not collected by pytest):

  container_check.py stream --target 127.0.0.1:PORT --model char-lstm --repository DIR
                            [--metrics URL] [--state-file FILE]
      streams tokens through the published port with the client library, compares every step's
      outputs and a greedy generation with onnxruntime run here on the same model file; with
      --state-file, leaves one session open halfway and records it there.
  container_check.py resume --target ... --state-file FILE
      after `docker restart`: the recorded session must continue exactly where it stopped.
  container_check.py signed --target ... [--secret-file FILE]
      snapshots the container exports are signed (with FILE's secret, when given); it imports its
      own, and refuses an unsigned copy of the same state (what a forger without the secret has).
  container_check.py load-report LOG
      the `rnnserve-load` table in LOG must show successful messages and zero failures.
"""

from __future__ import annotations

import argparse
import json
import re
import struct
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from rnnserve.client import Client
from rnnserve.server.manifest import ONNX_FILENAME, ModelManifest, load_manifest

CLIENT_ID = "container-test"
# Per-message step counts sent before the restart, and after it; uneven on purpose (1-step
# messages, chunks, a long chunk), so batching and chunking both take part.
CHUNKS_BEFORE = (1, 7, 1, 32, 3, 16)
CHUNKS_AFTER = (5, 1, 24)
ATOL = 1e-4
RTOL = 1e-4

FloatArray = npt.NDArray[np.float32]


class CheckFailed(Exception):
    """A value the container returned differs from what a user must get."""


@dataclass
class Reference:
    """The same model run in-process with onnxruntime, whole sequences from the initial state."""

    manifest: ModelManifest
    session: ort.InferenceSession

    @classmethod
    def load(cls, repository: Path, model: str) -> Reference:
        path = repository / model / "model.json"
        if not path.is_file():
            raise CheckFailed(f"no model {model!r} in {repository} (no {path.name})")
        manifest = load_manifest(path)
        onnx_path = repository / model / str(manifest.latest_version) / ONNX_FILENAME
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(str(onnx_path), options, ["CPUExecutionProvider"])
        return cls(manifest, session)

    @property
    def vocabulary_size(self) -> int:
        spec = self.manifest.input
        if spec.kind != "tokens":
            raise SystemExit(f"{self.manifest.name}: the container check needs a token model")
        return len(spec.vocabulary)

    def run(self, tokens: list[int]) -> dict[str, FloatArray]:
        """Each output [steps, *shape] for `tokens` fed from the initial state."""
        feeds: dict[str, npt.NDArray[np.generic]] = {
            self.manifest.input.name: np.asarray([tokens], dtype=np.int64)
        }
        for state in self.manifest.states:
            feeds[state.input_name] = np.full(
                state.full_shape(1), state.initial_value, dtype=np.float32
            )
        names = [output.name for output in self.manifest.outputs]
        values = self.session.run(names, feeds)
        return {name: np.asarray(value)[0] for name, value in zip(names, values, strict=True)}

    def greedy(self, prompt: list[int], max_tokens: int) -> list[int]:
        """Greedy decoding (argmax of the first output), re-running the whole prefix each time."""
        tokens, generated = list(prompt), []
        first = self.manifest.outputs[0].name
        for _ in range(max_tokens):
            next_id = int(np.argmax(self.run(tokens)[first][-1]))
            generated.append(next_id)
            tokens.append(next_id)
        return generated


def token_sequence(vocabulary_size: int, length: int, seed: int) -> list[int]:
    """Deterministic token ids covering the vocabulary."""
    return [int(i) for i in np.random.default_rng(seed).integers(0, vocabulary_size, length)]


def split(tokens: list[int], sizes: tuple[int, ...]) -> list[list[int]]:
    """`tokens` cut into consecutive messages of `sizes` steps."""
    pieces, start = [], 0
    for size in sizes:
        pieces.append(tokens[start : start + size])
        start += size
    return pieces


def compare(got: dict[str, FloatArray], want: dict[str, FloatArray], what: str) -> float:
    """Raise CheckFailed unless every output matches; return the largest difference."""
    worst = 0.0
    for name, expected in want.items():
        if name not in got:
            raise CheckFailed(f"{what}: output {name!r} missing (got {sorted(got)})")
        actual = got[name]
        if actual.shape != expected.shape:
            raise CheckFailed(f"{what}: {name} shape {actual.shape}, expected {expected.shape}")
        difference = float(np.max(np.abs(actual - expected))) if expected.size else 0.0
        if not np.allclose(actual, expected, atol=ATOL, rtol=RTOL):
            raise CheckFailed(f"{what}: {name} differs from onnxruntime by up to {difference:.3g}")
        worst = max(worst, difference)
    return worst


def stream_and_compare(
    client: Client,
    session_id: str,
    pieces: list[list[int]],
    want: dict[str, FloatArray],
    offset: int,
) -> tuple[float, int]:
    """Stream `pieces` on a session and compare each reply with `want` rows from `offset`."""
    session = client.attach(session_id)
    worst, position = 0.0, offset
    for piece, result in zip(pieces, session.stream(pieces), strict=True):
        got = {name: np.asarray(out.tensor) for name, out in result.outputs.items()}
        rows = {name: value[position : position + len(piece)] for name, value in want.items()}
        what = f"steps {position}..{position + len(piece) - 1}"
        worst = max(worst, compare(got, rows, what))
        position += len(piece)
        if result.step_count != position:
            raise CheckFailed(f"{what}: server step_count {result.step_count}, expected {position}")
    return worst, position


def check_kserve(target: str, model: str, tokens: list[int], want: dict[str, FloatArray]) -> None:
    """The KServe v2 front door on the same published port: a three-request sequence (START,
    a step, END) gives the reference's outputs, and the ended sequence is refused after."""
    import grpc
    from rnnserve.kserve.v2 import grpc_service_pb2 as kpb
    from rnnserve.kserve.v2 import grpc_service_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        if not stub.ServerReady(kpb.ServerReadyRequest(), timeout=10).ready:
            raise CheckFailed("KServe ServerReady says not ready")
        position = 0
        for index, piece in enumerate(split(tokens, (2, 3, 1))):
            request = kpb.ModelInferRequest(model_name=model)
            request.inputs.add(name="tokens", datatype="INT64", shape=[1, len(piece)])
            request.raw_input_contents.append(np.asarray(piece, "<i8").tobytes())
            request.parameters["sequence_id"].string_param = "container-check"
            request.parameters["sequence_start"].bool_param = index == 0
            request.parameters["sequence_end"].bool_param = index == 2
            reply = stub.ModelInfer(request, timeout=10, metadata=(("x-client-id", CLIENT_ID),))
            got = {
                tensor.name: np.frombuffer(raw, "<f4").reshape(list(tensor.shape))[0]
                for tensor, raw in zip(reply.outputs, reply.raw_output_contents, strict=True)
            }
            rows = {name: value[position : position + len(piece)] for name, value in want.items()}
            compare(got, rows, f"KServe steps {position}..{position + len(piece) - 1}")
            position += len(piece)
        ended = kpb.ModelInferRequest(model_name=model)
        ended.inputs.add(name="tokens", datatype="INT64", shape=[1, 1])
        ended.raw_input_contents.append(np.asarray(tokens[:1], "<i8").tobytes())
        ended.parameters["sequence_id"].string_param = "container-check"
        try:
            stub.ModelInfer(ended, timeout=10, metadata=(("x-client-id", CLIENT_ID),))
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.INVALID_ARGUMENT:  # type: ignore[attr-defined]
                raise
        else:
            raise CheckFailed("KServe: an ended sequence was continued without START")
    print(f"kserve: a {position}-token sequence through ModelInfer matches onnxruntime")


def check_metrics(url: str) -> None:
    """The Prometheus endpoint answers through its published port with rnnserve metrics."""
    with urllib.request.urlopen(url, timeout=10) as response:
        body = response.read().decode("utf-8")
    if response.status != 200 or not re.search(r"^rnnserve_\w+", body, re.MULTILINE):
        raise CheckFailed(f"{url}: no rnnserve_* metrics in the reply ({len(body)} bytes)")
    print(f"metrics: {url} serves {len(re.findall(r'^rnnserve_', body, re.MULTILINE))} samples")


def run_stream(args: argparse.Namespace) -> None:
    reference = Reference.load(args.repository, args.model)
    tokens = token_sequence(reference.vocabulary_size, sum(CHUNKS_BEFORE) + sum(CHUNKS_AFTER), 1)
    before = tokens[: sum(CHUNKS_BEFORE)]
    want = reference.run(tokens)
    started = time.perf_counter()
    with Client(args.target, client_id=CLIENT_ID, timeout=30.0) as client:
        served = {model.name for model in client.models()}
        if args.model not in served:
            raise CheckFailed(f"{args.model} not served; the server lists {sorted(served)}")
        session = client.session(args.model)
        worst, position = stream_and_compare(
            client, session.session_id, split(before, CHUNKS_BEFORE), want, 0
        )
        print(
            f"stream: {position} tokens in {len(CHUNKS_BEFORE)} messages match onnxruntime "
            f"(max |diff| {worst:.2g}) via {args.target}"
        )

        prompt = before[:8]
        expected = reference.greedy(prompt, 12)
        generation = client.generate(args.model, prompt, max_tokens=12, temperature=0.0)
        pieces = list(generation)
        if generation.token_ids != expected or len(pieces) != len(expected):
            raise CheckFailed(f"greedy generation {generation.token_ids}, expected {expected}")
        print(f"generate: {len(expected)} greedy tokens streamed, identical to onnxruntime")

        if args.state_file is None:
            session.close()
        else:
            record = {"session_id": session.session_id, "tokens": tokens, "position": position}
            args.state_file.write_text(json.dumps(record), encoding="utf-8")
            print(f"session {session.session_id[:8]}... left open at step {position}")
    check_kserve(args.target, args.model, tokens[:6], want)
    if args.metrics:
        check_metrics(args.metrics)
    print(f"stream check passed in {time.perf_counter() - started:.1f} s")


def run_resume(args: argparse.Namespace) -> None:
    reference = Reference.load(args.repository, args.model)
    record = json.loads(args.state_file.read_text(encoding="utf-8"))
    tokens, position = record["tokens"], record["position"]
    want = reference.run(tokens)
    with Client(args.target, client_id=CLIENT_ID, timeout=30.0) as client:
        session = client.attach(record["session_id"])
        if session.step_count != position:
            raise CheckFailed(f"restored session at step {session.step_count}, expected {position}")
        worst, end = stream_and_compare(
            client, session.session_id, split(tokens[position:], CHUNKS_AFTER), want, position
        )
        session.close()
    print(
        f"resume: the session survived the restart at step {position} and continued "
        f"identically to step {end} (max |diff| {worst:.2g})"
    )


def run_signed(args: argparse.Namespace) -> None:
    import grpc
    from rnnserve.server import snapshot
    from rnnserve.server.errors import InvalidSnapshot
    from rnnserve.v1 import rnnserve_pb2 as pb
    from rnnserve.v1 import rnnserve_pb2_grpc

    who = (("x-client-id", CLIENT_ID),)
    with grpc.insecure_channel(args.target) as channel:
        stub = rnnserve_pb2_grpc.InferenceServiceStub(channel)
        opened = stub.CreateSession(
            pb.CreateSessionRequest(model=pb.ModelRef(name=args.model)), timeout=10, metadata=who
        ).session.session_id
        fed = pb.StepInput(tokens=pb.TokenIds(ids=[1, 2, 3]))
        stub.Step(pb.StepRequest(session_id=opened, input=fed), timeout=10, metadata=who)
        data = stub.ExportState(
            pb.ExportStateRequest(session_id=opened), timeout=10, metadata=who
        ).snapshot
        (flags,) = struct.unpack_from("<H", data, len(snapshot.MAGIC) + 2)
        if not flags & snapshot.FLAG_HMAC:
            raise CheckFailed("the container exported an unsigned snapshot")
        if args.secret_file is not None:
            secret = args.secret_file.read_bytes().strip()
            try:
                snapshot.decode(data, secret)
            except InvalidSnapshot as err:
                raise CheckFailed(
                    f"the snapshot is not signed with {args.secret_file}: {err}"
                ) from None
        copy = stub.ImportState(
            pb.ImportStateRequest(snapshot=data), timeout=10, metadata=who
        ).session
        if copy.step_count != 3:
            raise CheckFailed(f"its own snapshot imported at step {copy.step_count}, not 3")
        unsigned = snapshot.encode(snapshot.decode(data))  # same state, no signature
        try:
            stub.ImportState(pb.ImportStateRequest(snapshot=unsigned), timeout=10, metadata=who)
        except grpc.RpcError as err:
            code, details = err.code(), err.details()
            if code != grpc.StatusCode.INVALID_ARGUMENT or "not signed" not in details:
                raise CheckFailed(
                    f"an unsigned snapshot was refused with {code}: {details}"
                ) from None
        else:
            raise CheckFailed("the container imported an unsigned snapshot")
        for session_id in (opened, copy.session_id):
            stub.CloseSession(
                pb.CloseSessionRequest(session_id=session_id), timeout=10, metadata=who
            )
    signer = f"the secret in {args.secret_file}" if args.secret_file else "its secret"
    print(f"signed: snapshots are signed with {signer}; an unsigned copy is refused")


def run_load_report(args: argparse.Namespace) -> None:
    text = args.log.read_text(encoding="utf-8", errors="replace")
    match = re.search(r"Messages:\s+[\d,]+\s+ok\s+([\d,]+)\s+failed\s+([\d,]+)", text)
    if match is None:
        raise CheckFailed(f"{args.log}: no 'Messages: ... ok N failed M' line in the load report")
    ok, failed = (int(group.replace(",", "")) for group in match.groups())
    if ok == 0 or failed != 0:
        raise CheckFailed(f"load test: {ok} messages ok, {failed} failed (want >0 ok, 0 failed)")
    print(f"load test: {ok:,} messages ok, 0 failed")


def main() -> int:
    """CLI entry point; exit status 1 with the reason when a check fails."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("stream", "resume"):
        command = commands.add_parser(name)
        command.add_argument("--target", required=True)
        command.add_argument("--model", default="char-lstm")
        command.add_argument("--repository", type=Path, default=Path("models/repository"))
        command.add_argument("--state-file", type=Path, required=name == "resume")
        if name == "stream":
            command.add_argument("--metrics")
    signed = commands.add_parser("signed")
    signed.add_argument("--target", required=True)
    signed.add_argument("--model", default="char-lstm")
    signed.add_argument("--secret-file", type=Path)
    commands.add_parser("load-report").add_argument("log", type=Path)
    args = parser.parse_args()
    handlers = {
        "stream": run_stream,
        "resume": run_resume,
        "signed": run_signed,
        "load-report": run_load_report,
    }
    try:
        handlers[args.command](args)
    except CheckFailed as failure:
        print(f"CHECK FAILED: {failure}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
