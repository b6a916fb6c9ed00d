"""Authentication and TLS end to end: bearer tokens on every method of both front doors, session
ownership by principal, x-client-id as a sub-identity only, TLS and mutual TLS handshakes, the
per-principal call cap, and the start-time rules (loopback, TLS files)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from rnnserve.client import AsyncClient, Client, InvalidArgument, NotFound, Unauthenticated
from rnnserve.client.load.config import LoadConfig
from rnnserve.client.load.runner import run_load_async
from rnnserve.kserve.v2 import grpc_service_pb2 as kserve_pb2
from rnnserve.server import cli
from rnnserve.server.app import build_server
from rnnserve.server.security import SecurityConfigError
from rnnserve.server.tokens import token_line
from rnnserve.v1 import rnnserve_pb2 as pb
from rnnserve.v1 import rnnserve_pb2_grpc
from server_helpers import Running, make_settings, tokens
from tiny_models import GRU_LM
from tls_certs import CertificateAuthority

ALICE_TOKEN = "alice-token-3f9c2a7d1e8b4c6a"
BOB_TOKEN = "bob-token-8e1d5b7a2c9f4e3d"
SERVICES = [
    pb.DESCRIPTOR.services_by_name["InferenceService"],
    kserve_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"],
]
EVERY_METHOD = [(service.full_name, method) for service in SERVICES for method in service.methods]
SERVING = health_pb2.HealthCheckResponse.SERVING

Serve = Callable[..., Awaitable[Running]]


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens"
    path.write_text(
        f"# who may call\n{token_line(ALICE_TOKEN, 'alice')}\n{token_line(BOB_TOKEN, 'bob')}\n"
    )
    return path


@pytest.fixture
async def authed(serve: Serve, tokens_file: Path) -> Running:
    """A server that wants bearer tokens (alice and bob)."""
    return await serve(auth_tokens_file=tokens_file)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A CA, its server certificate, two client certificates, and a stranger CA's client cert."""
    folder = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority(folder / "ca")
    stranger = CertificateAuthority(folder / "stranger", "stranger CA")
    return {
        "ca": ca,
        "server": ca.server(),
        "device-a": ca.client("device-a", "device-a"),
        "device-b": ca.client("device-b", "device-b"),
        "stranger": stranger,
        "stranger-client": stranger.client("device-a", "stranger-client"),
    }


async def call_status(
    channel: grpc.aio.Channel,
    path: str,
    method: Any,
    metadata: tuple[tuple[str, str], ...] = (),
) -> tuple[grpc.StatusCode, str]:
    """Call any method with an empty request body; its final status code and message."""
    if method.client_streaming and method.server_streaming:
        call: Any = channel.stream_stream(path)(iter([b""]), metadata=metadata, timeout=10)
    elif method.client_streaming:
        call = channel.stream_unary(path)(iter([b""]), metadata=metadata, timeout=10)
    elif method.server_streaming:
        call = channel.unary_stream(path)(b"", metadata=metadata, timeout=10)
    else:
        call = channel.unary_unary(path)(b"", metadata=metadata, timeout=10)
    return await call.code(), await call.details() or ""


async def open_session(
    stub: rnnserve_pb2_grpc.InferenceServiceStub, metadata: tuple[tuple[str, str], ...]
) -> str:
    reply = await stub.CreateSession(
        pb.CreateSessionRequest(model=pb.ModelRef(name=GRU_LM)), metadata=metadata, timeout=10
    )
    return str(reply.session.session_id)


async def step_count(
    stub: rnnserve_pb2_grpc.InferenceServiceStub,
    session_id: str,
    metadata: tuple[tuple[str, str], ...],
) -> int:
    reply = await stub.GetSession(
        pb.GetSessionRequest(session_id=session_id), metadata=metadata, timeout=10
    )
    return int(reply.session.step_count)


async def error_of(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


# ---- bearer tokens -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("service", "method"), EVERY_METHOD, ids=[f"{s}.{m.name}" for s, m in EVERY_METHOD]
)
async def test_every_method_without_a_valid_token_is_unauthenticated(
    authed: Running, service: str, method: Any
) -> None:
    path = f"/{service}/{method.name}"
    refusals = {
        "no header": (),
        "wrong token": bearer("not-a-token-anyone-has"),
        "not bearer": (("authorization", f"Basic {ALICE_TOKEN}"),),
        "two headers": bearer(ALICE_TOKEN) + bearer(ALICE_TOKEN),
    }
    for why, metadata in refusals.items():
        code, message = await call_status(authed.channel, path, method, metadata)
        assert code == grpc.StatusCode.UNAUTHENTICATED, (why, code, message)
        assert ALICE_TOKEN not in message and "not-a-token" not in message


async def test_unauthenticated_messages_say_what_to_send(authed: Running) -> None:
    stub = authed.stub
    missing = await error_of(stub.ListModels(pb.ListModelsRequest()))
    assert missing.details() == "no credentials: send 'authorization: Bearer <token>'"
    wrong = await error_of(stub.ListModels(pb.ListModelsRequest(), metadata=bearer("nope")))
    assert wrong.details() == "invalid bearer token"


def _use_the_sync_client(address: str) -> None:
    with Client(address, token=ALICE_TOKEN, timeout=10) as client:
        assert GRU_LM in {model.name for model in client.models()}
        with client.session(GRU_LM) as session:
            first = session.feed([1, 2, 3])
            assert first.step_count == 3
            with session.open_stream() as stream:  # a Stream call carries the token too
                assert stream.feed([1]).step_count == 4
            pieces = list(session.generate([2], max_tokens=3, seed=1))
            assert len(pieces) == 3
        assert len(client.predict(GRU_LM, [[1, 2], [3]])) == 2
    with Client(address, timeout=10) as anonymous, pytest.raises(Unauthenticated):
        anonymous.models()


async def test_a_valid_token_works_end_to_end_through_the_client_library(
    authed: Running,
) -> None:
    # The sync client blocks: it runs in a thread while this loop serves it.
    await asyncio.to_thread(_use_the_sync_client, authed.address)
    async with AsyncClient(authed.address, token=BOB_TOKEN, timeout=10) as client:
        async with client.session(GRU_LM) as session:
            assert (await session.feed([1, 2])).step_count == 2
        generated = [piece async for piece in client.generate(GRU_LM, [1], max_tokens=2)]
        assert len(generated) == 2


async def test_health_and_reflection_are_open_by_default(authed: Running) -> None:
    health = health_pb2_grpc.HealthStub(authed.channel)
    reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert reply.status == SERVING
    assert "rnnserve.v1.InferenceService" in await _reflected_services(authed.channel)


async def test_health_and_reflection_can_require_a_token(serve: Serve, tokens_file: Path) -> None:
    running = await serve(
        auth_tokens_file=tokens_file, auth_open_health=False, auth_open_reflection=False
    )
    health = health_pb2_grpc.HealthStub(running.channel)
    refused = await error_of(health.Check(health_pb2.HealthCheckRequest(), timeout=10))
    assert refused.code() == grpc.StatusCode.UNAUTHENTICATED
    refused = await error_of(_reflected_services(running.channel))
    assert refused.code() == grpc.StatusCode.UNAUTHENTICATED
    reply = await health.Check(
        health_pb2.HealthCheckRequest(), metadata=bearer(ALICE_TOKEN), timeout=10
    )
    assert reply.status == SERVING
    assert "rnnserve.v1.InferenceService" in await _reflected_services(
        running.channel, bearer(ALICE_TOKEN)
    )


async def _reflected_services(
    channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...] = ()
) -> set[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
        metadata=metadata,
        timeout=10,
    )
    async for reply in call:
        return {service.name for service in reply.list_services_response.service}
    return set()


def test_the_healthcheck_command_sends_a_token(
    tokens_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], tiny_repository: Path
) -> None:
    token_file = tmp_path / "alice.token"
    token_file.write_text(ALICE_TOKEN + "\n")

    async def check() -> tuple[int, int]:
        settings = make_settings(
            tiny_repository, auth_tokens_file=tokens_file, auth_open_health=False
        )
        server, port = build_server(settings)
        await server.start()
        try:
            flags = ["healthcheck", "--port", str(port)]
            without = await asyncio.to_thread(cli.main, flags)
            with_token = await asyncio.to_thread(
                cli.main, [*flags, "--token-file", str(token_file)]
            )
        finally:
            await server.stop(1.0)
        return without, with_token

    without, with_token = asyncio.run(check())
    assert (without, with_token) == (cli.HEALTH_EXIT_UNREACHABLE, cli.HEALTH_EXIT_SERVING)
    assert "UNAUTHENTICATED" in capsys.readouterr().err


# ---- sessions belong to principals -------------------------------------------------------------


async def test_another_principals_token_on_a_known_session_id_is_not_found(
    authed: Running,
) -> None:
    stub, alice, bob = authed.stub, bearer(ALICE_TOKEN), bearer(BOB_TOKEN)
    session = await open_session(stub, alice)
    await stub.Step(pb.StepRequest(session_id=session, input=tokens([1, 2])), metadata=alice)
    unknown = await error_of(
        stub.GetSession(pb.GetSessionRequest(session_id="f" * 32), metadata=bob)
    )
    attempts = {
        "GetSession": stub.GetSession(pb.GetSessionRequest(session_id=session), metadata=bob),
        "Step": stub.Step(pb.StepRequest(session_id=session, input=tokens([3])), metadata=bob),
        "ExportState": stub.ExportState(pb.ExportStateRequest(session_id=session), metadata=bob),
        "ResetSession": stub.ResetSession(pb.ResetSessionRequest(session_id=session), metadata=bob),
        "CloseSession": stub.CloseSession(pb.CloseSessionRequest(session_id=session), metadata=bob),
        "Generate": _drain(
            stub.Generate(pb.GenerateRequest(session_id=session, max_tokens=2), metadata=bob)
        ),
    }
    for method, attempt in attempts.items():
        err = await error_of(attempt)
        assert err.code() == grpc.StatusCode.NOT_FOUND, (method, err.code(), err.details())
        # The same answer as for an id that never existed: no existence oracle.
        assert err.details().replace(session[:8], "f" * 8) == unknown.details(), method
    opened = await _stream_open(stub, session, bob)
    assert opened.error.code == grpc.StatusCode.NOT_FOUND.value[0]
    # Nothing bob tried changed alice's session.
    assert await step_count(stub, session, alice) == 2


async def test_x_client_id_cannot_impersonate_another_principal(authed: Running) -> None:
    stub, alice = authed.stub, bearer(ALICE_TOKEN)
    session = await open_session(stub, alice)
    bob_as_alice = (*bearer(BOB_TOKEN), ("x-client-id", "alice"))
    err = await error_of(
        stub.GetSession(pb.GetSessionRequest(session_id=session), metadata=bob_as_alice)
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND
    # x-client-id alone, with no token, is no credential at all.
    err = await error_of(
        stub.GetSession(
            pb.GetSessionRequest(session_id=session), metadata=(("x-client-id", "alice"),)
        )
    )
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    # Under a token it names a sub-identity: alice's worker owns its own sessions.
    worker = (*alice, ("x-client-id", "worker-1"))
    own = await open_session(stub, worker)
    assert await step_count(stub, own, worker) == 0
    for other in (alice, (*bearer(BOB_TOKEN), ("x-client-id", "alice/worker-1"))):
        err = await error_of(stub.GetSession(pb.GetSessionRequest(session_id=own), metadata=other))
        assert err.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("auth", [True, False], ids=["auth", "no-auth"])
async def test_a_bad_x_client_id_is_invalid_argument(
    serve: Serve, tokens_file: Path, auth: bool
) -> None:
    running = await serve(max_id_length=16, **({"auth_tokens_file": tokens_file} if auth else {}))
    token = ALICE_TOKEN if auth else None

    def models_with_a_long_client_id() -> InvalidArgument:
        with (
            Client(running.address, token=token, client_id="x" * 17, timeout=10) as client,
            pytest.raises(InvalidArgument) as caught,
        ):
            client.models()
        return caught.value

    refused = await asyncio.to_thread(models_with_a_long_client_id)
    assert refused.field == "metadata.x-client-id"
    assert "at most 16" in refused.message
    twice = (("x-client-id", "a"), ("x-client-id", "b"))
    metadata = (bearer(ALICE_TOKEN) if auth else ()) + twice
    err = await error_of(running.stub.ListModels(pb.ListModelsRequest(), metadata=metadata))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == "metadata.x-client-id: sent 2 times; send it at most once"


async def _drain(call: Any) -> list[Any]:
    return [reply async for reply in call]


async def _stream_open(
    stub: rnnserve_pb2_grpc.InferenceServiceStub,
    session: str,
    metadata: tuple[tuple[str, str], ...],
) -> pb.StreamResponse:
    call = stub.Stream(metadata=metadata, timeout=10)
    await call.write(pb.StreamRequest(open=pb.OpenSession(session_id=session)))
    reply: pb.StreamResponse = await call.read()
    call.cancel()
    return reply


# ---- TLS and mutual TLS ------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def secure_channel(
    port: int, ca: CertificateAuthority, client: Any = None
) -> AsyncIterator[grpc.aio.Channel]:
    credentials = grpc.ssl_channel_credentials(
        ca.cert_pem,
        None if client is None else client.key_pem,
        None if client is None else client.cert_pem,
    )
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
        yield channel


async def _health_code(channel: grpc.aio.Channel) -> grpc.StatusCode:
    try:
        await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


async def test_tls_handshakes(serve: Serve, pki: dict[str, Any]) -> None:
    ca, server = pki["ca"], pki["server"]
    running = await serve(tls_cert_file=server.cert_file, tls_key_file=server.key_file)
    async with secure_channel(running.port, ca) as channel:
        assert await _health_code(channel) == grpc.StatusCode.OK
    # A plaintext client, and one that trusts another CA, never get through.
    assert await _health_code(running.channel) == grpc.StatusCode.UNAVAILABLE
    async with secure_channel(running.port, pki["stranger"]) as channel:
        assert await _health_code(channel) == grpc.StatusCode.UNAVAILABLE

    def feed_over_tls() -> int:
        with (
            Client(running.address, tls_ca=ca.cert_file, timeout=10) as client,
            client.session(GRU_LM) as session,
        ):
            return session.feed([1, 2]).step_count

    assert await asyncio.to_thread(feed_over_tls) == 2


async def test_mutual_tls_certificates_name_the_principal(
    serve: Serve, pki: dict[str, Any]
) -> None:
    ca, server = pki["ca"], pki["server"]
    running = await serve(
        tls_cert_file=server.cert_file,
        tls_key_file=server.key_file,
        tls_client_ca_file=ca.cert_file,
    )
    async with secure_channel(running.port, ca) as channel:  # no client certificate
        assert await _health_code(channel) == grpc.StatusCode.UNAVAILABLE
    async with secure_channel(running.port, ca, pki["stranger-client"]) as channel:
        assert await _health_code(channel) == grpc.StatusCode.UNAVAILABLE
    device_a, device_b = pki["device-a"], pki["device-b"]
    async with (
        AsyncClient(
            running.address,
            tls_ca=ca.cert_file,
            tls_cert=device_a.cert_file,
            tls_key=device_a.key_file,
            timeout=10,
        ) as a,
        AsyncClient(
            running.address,
            tls_ca=ca.cert_file,
            tls_cert=device_b.cert_file,
            tls_key=device_b.key_file,
            timeout=10,
        ) as b,
    ):
        session = await a.session(GRU_LM)
        await session.feed([1, 2, 3])
        assert (await a.attach(session.session_id)).info.step_count == 3
        with pytest.raises(NotFound):
            await b.attach(session.session_id)
    owners = {s.identity for s in running.server.engine.sessions.live()}
    assert owners == {"cert:device-a"}


async def test_load_generator_over_tls_and_token(
    serve: Serve, pki: dict[str, Any], tokens_file: Path
) -> None:
    ca, server = pki["ca"], pki["server"]
    running = await serve(
        auth_tokens_file=tokens_file,
        tls_cert_file=server.cert_file,
        tls_key_file=server.key_file,
        metrics_port=0,
        metrics_auth=True,
    )
    config = LoadConfig(
        target=f"127.0.0.1:{running.port}",
        model=GRU_LM,
        mode="stream",
        concurrency=4,
        steps=20,
        warmup_messages=2,
        token=ALICE_TOKEN,
        tls_ca=str(ca.cert_file),
        metrics_url=f"http://127.0.0.1:{running.server.metrics_port}/metrics",
    )
    assert ALICE_TOKEN not in repr(config)
    result = await run_load_async(config)
    assert result.summary.messages_ok == 4 * 20
    assert result.summary.messages_failed == 0
    assert result.summary.codes == {"OK": 4 * 20}
    # The token also opened the metrics endpoint (metrics_auth): the server's own split is there.
    assert result.server is not None and result.server.steps_queued > 0
    assert ALICE_TOKEN not in str(result.to_dict())


# ---- the per-principal call cap ----------------------------------------------------------------


async def _open_streams(
    stub: rnnserve_pb2_grpc.InferenceServiceStub, metadata: tuple[tuple[str, str], ...], count: int
) -> list[Any]:
    calls = []
    for _ in range(count):
        call = stub.Stream(metadata=metadata, timeout=30)
        await call.write(pb.StreamRequest(open=pb.OpenSession(model=pb.ModelRef(name=GRU_LM))))
        reply = await call.read()
        assert reply.WhichOneof("kind") == "session"
        calls.append(call)
    return calls


async def test_per_principal_call_cap(serve: Serve, tokens_file: Path) -> None:
    running = await serve(auth_tokens_file=tokens_file, max_calls_per_principal=2)
    stub, alice, bob = running.stub, bearer(ALICE_TOKEN), bearer(BOB_TOKEN)
    streams = await _open_streams(stub, alice, 2)
    # Sub-identities share their principal's cap.
    worker = (*alice, ("x-client-id", "worker-9"))
    refused = await error_of(stub.ListModels(pb.ListModelsRequest(), metadata=worker))
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_calls_per_principal" in (refused.details() or "")
    assert len((await stub.ListModels(pb.ListModelsRequest(), metadata=bob)).models) > 0
    streams[0].cancel()
    # The server sees the cancellation asynchronously; then alice has a free slot again.
    assert len((await _list_when_free(stub, alice)).models) > 0
    streams[1].cancel()


async def test_call_cap_without_auth_is_per_identity(serve: Serve) -> None:
    running = await serve(max_calls_per_principal=1)
    stub = running.stub
    streams = await _open_streams(stub, (("x-client-id", "a"),), 1)
    refused = await error_of(
        stub.ListModels(pb.ListModelsRequest(), metadata=(("x-client-id", "a"),))
    )
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    reply = await stub.ListModels(pb.ListModelsRequest(), metadata=(("x-client-id", "b"),))
    assert len(reply.models) > 0
    streams[0].cancel()


async def _list_when_free(
    stub: rnnserve_pb2_grpc.InferenceServiceStub, metadata: tuple[tuple[str, str], ...]
) -> pb.ListModelsResponse:
    """ListModels, retried while the caller is at its call cap (for at most ~5 s)."""
    for _ in range(250):
        try:
            reply: pb.ListModelsResponse = await stub.ListModels(
                pb.ListModelsRequest(), metadata=metadata, timeout=10
            )
            return reply
        except grpc.aio.AioRpcError as err:
            if err.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise
        await asyncio.sleep(0.02)
    raise AssertionError("the call slot was never freed")


# ---- start-time rules --------------------------------------------------------------------------


async def test_an_exposed_listener_without_auth_refuses_to_start(tiny_repository: Path) -> None:
    with pytest.raises(SecurityConfigError, match="--allow-unauthenticated"):
        build_server(make_settings(tiny_repository, host="0.0.0.0"))


@pytest.mark.parametrize("opt_in", ["allow_unauthenticated", "auth_tokens_file"])
async def test_an_exposed_listener_starts_with_auth_or_an_explicit_opt_in(
    tiny_repository: Path, tokens_file: Path, opt_in: str
) -> None:
    value: Any = True if opt_in == "allow_unauthenticated" else tokens_file
    server, port = build_server(make_settings(tiny_repository, host="0.0.0.0", **{opt_in: value}))
    assert port > 0
    await server.grpc_server.stop(None)  # bound, never started


def test_the_serve_command_says_how_to_fix_an_exposed_listener(
    tiny_repository: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["serve", "--host", "0.0.0.0", "--port", "0", "--model-repository", str(tiny_repository)]
    assert cli.main([*argv, "--metrics-port", "-1"]) == 1
    error = capsys.readouterr().err
    assert "without authentication" in error and "--auth-tokens-file" in error


async def test_tls_settings_that_cannot_work_refuse_to_start(
    tiny_repository: Path, pki: dict[str, Any], tmp_path: Path
) -> None:
    server, other = pki["server"], pki["device-a"]
    bad = {
        "tls_key_file is not set": {"tls_cert_file": server.cert_file},
        "tls_cert_file is not set": {"tls_key_file": server.key_file},
        "needs tls_cert_file": {"tls_client_ca_file": pki["ca"].cert_file},
        "cannot read": {"tls_cert_file": tmp_path / "missing.pem", "tls_key_file": server.key_file},
        "not the certificate's private key": {
            "tls_cert_file": server.cert_file,
            "tls_key_file": other.key_file,
        },
    }
    for message, overrides in bad.items():
        with pytest.raises(SecurityConfigError, match=message):
            build_server(make_settings(tiny_repository, **overrides))
