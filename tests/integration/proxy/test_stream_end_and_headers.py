"""What makes a server proxy-safe, checked directly: a closed stream ends at the client's
half-close, and every response that creates a session names it in x-rnnserve-session."""

from __future__ import annotations

import asyncio

import grpc
from rnnserve.client import AsyncClient
from rnnserve.v1 import rnnserve_pb2 as pb
from server_helpers import Running, identity, open_session, tokens
from tiny_models import GRU_LM

ALICE = identity("alice")
HEADER = "x-rnnserve-session"


def _named(metadata: object) -> str | None:
    return dict(metadata or ()).get(HEADER)  # type: ignore[call-overload, no-any-return]


async def test_a_closed_stream_ends_at_the_half_close_with_ok(rpc: Running) -> None:
    call = rpc.stub.Stream(metadata=ALICE)
    await call.write(pb.StreamRequest(open=pb.OpenSession(model=pb.ModelRef(name=GRU_LM))))
    opened = await call.read()
    await call.write(pb.StreamRequest(control=pb.CONTROL_ACTION_CLOSE))
    closed = await call.read()
    assert closed.session.session_id == opened.session.session_id
    # The server does not end the call under a client that may still be sending (a proxy would
    # reset the client's side): no status until the client half-closes.
    await call.write(pb.StreamRequest(step=tokens([1])))  # after CLOSE: read, not answered
    done, _ = await asyncio.wait({asyncio.ensure_future(call.code())}, timeout=0.5)
    assert not done
    await call.done_writing()
    assert await call.read() is grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK


async def test_responses_that_create_a_session_name_it(rpc: Running) -> None:
    created = rpc.stub.CreateSession(
        pb.CreateSessionRequest(model=pb.ModelRef(name=GRU_LM)), metadata=ALICE
    )
    session_id = (await created).session.session_id
    assert _named(await created.initial_metadata()) == session_id

    exported = await rpc.stub.ExportState(
        pb.ExportStateRequest(session_id=session_id), metadata=ALICE
    )
    imported = rpc.stub.ImportState(
        pb.ImportStateRequest(snapshot=exported.snapshot), metadata=ALICE
    )
    assert _named(await imported.initial_metadata()) == (await imported).session.session_id

    stream = rpc.stub.Stream(metadata=ALICE)
    await stream.write(pb.StreamRequest(open=pb.OpenSession(model=pb.ModelRef(name=GRU_LM))))
    opened = await stream.read()
    assert _named(await stream.initial_metadata()) == opened.session.session_id
    await stream.done_writing()

    generation = rpc.stub.Generate(
        pb.GenerateRequest(
            model=pb.ModelRef(name=GRU_LM), tokens=pb.TokenIds(ids=[1]), max_tokens=2
        ),
        metadata=ALICE,
    )
    first = await generation.read()
    assert _named(await generation.initial_metadata()) == first.session_id
    generation.cancel()


async def test_a_stream_whose_first_reply_is_an_error_still_works(rpc: Running) -> None:
    # The header goes out with the first reply only; an error before `open` takes that place.
    session_id = await open_session(rpc.stub, GRU_LM)
    call = rpc.stub.Stream(metadata=ALICE)
    await call.write(pb.StreamRequest(step=tokens([1])))
    assert (await call.read()).error.code_name == "FAILED_PRECONDITION"
    await call.write(pb.StreamRequest(open=pb.OpenSession(session_id=session_id)))
    assert (await call.read()).session.session_id == session_id
    assert _named(await call.initial_metadata()) is None
    await call.done_writing()
    assert await call.code() == grpc.StatusCode.OK


class _SeenHeaders(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Records the x-rnnserve-session header of every call, by method."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None]] = []

    async def intercept_service(self, continuation, details):  # type: ignore[no-untyped-def]
        method = details.method.rsplit("/", 1)[-1]
        self.seen.append((method, dict(details.invocation_metadata).get(HEADER)))
        return await continuation(details)


async def test_the_client_library_names_the_session_on_each_of_its_calls(rpc: Running) -> None:
    seen = _SeenHeaders()
    server = grpc.aio.server(interceptors=[seen])
    # The same servicer as the running server, behind an interceptor that records headers.
    from rnnserve.server.transport.servicer import InferenceServicer
    from rnnserve.v1 import rnnserve_pb2_grpc

    core = rpc.server.engine
    rnnserve_pb2_grpc.add_InferenceServiceServicer_to_server(InferenceServicer(core), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with AsyncClient(f"127.0.0.1:{port}", client_id="alice", timeout=10) as client:
            async with client.session(GRU_LM) as session:
                await session.feed([1])
                async for _ in session.stream([[2]]):
                    pass
                async for _ in session.generate(max_tokens=1, seed=1):
                    pass
                await session.describe()
                await session.snapshot()
                async with client.attach(session.session_id) as attached:
                    await attached.feed([3])
            named = {method for method, value in seen.seen if value == session.session_id}
            unnamed = {method for method, value in seen.seen if value is None}
    finally:
        await server.stop(None)
    assert {"Step", "Stream", "Generate", "GetSession", "ExportState", "CloseSession"} <= named
    assert "CreateSession" in unnamed and "GetModel" in unnamed
