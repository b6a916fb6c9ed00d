"""The synchronous Client against a fake server: calls, metadata, errors, retries, streams."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from client_fakes import BIDIRECTIONAL, MODEL, VOCABULARY, FakeServer, expected_logits
from rnnserve.client import (
    Aborted,
    Client,
    DeadlineExceeded,
    FailedPrecondition,
    FinishReason,
    InvalidArgument,
    NotFound,
    RetryPolicy,
    RnnServeError,
    Unavailable,
)

FAST_RETRY = RetryPolicy(attempts=3, initial_backoff=0.01, max_backoff=0.02)


@pytest.fixture
def client(fake_server: FakeServer) -> Client:
    with Client(fake_server.target, client_id="alice", timeout=10, retry=FAST_RETRY) as client:
        yield client  # type: ignore[misc]


def test_models_and_model_are_described_and_cached(client: Client, fake_server: FakeServer) -> None:
    names = [model.name for model in client.models()]
    assert names == [MODEL, BIDIRECTIONAL]
    info = client.model(MODEL)
    assert info.version == 2 and info.versions == (1, 2) and info.streamable
    assert info.vocabulary is not None and info.vocabulary.tokens == tuple(VOCABULARY)
    assert info.outputs[0].labels == tuple(VOCABULARY) and info.max_steps_per_message == 8
    client.model(MODEL)
    client.model(MODEL, 2)  # the latest's own version number is cached too
    assert fake_server.state.calls.count("GetModel") == 1
    client.model(MODEL, refresh=True)
    assert fake_server.state.calls.count("GetModel") == 2


def test_every_call_carries_the_client_id(client: Client, fake_server: FakeServer) -> None:
    client.models()
    with client.session(MODEL) as session:
        session.feed([0])
    assert fake_server.state.metadata
    assert all(m.get("x-client-id") == "alice" for m in fake_server.state.metadata)
    with Client(fake_server.target) as anonymous:
        anonymous.models()
    assert "x-client-id" not in fake_server.state.metadata[-1]


def test_feed_returns_numpy_outputs_and_tracks_the_step_count(client: Client) -> None:
    with client.session(MODEL) as session:
        assert session.step_count == 0
        first = session.feed([0, 1, 2])
        np.testing.assert_array_equal(first.tensor, expected_logits([0, 1, 2], 0))
        np.testing.assert_array_equal(first.argmax, [1, 2, 3])
        assert first.labels == ("b", "c", "d")
        assert (first.steps, first.step_count, session.step_count) == (3, 3, 3)
        # Text is encoded with the model's vocabulary; the state carries on.
        second = session.feed("da", output="top_k", top_k=2, steps="last")
        assert second.tensor is None
        np.testing.assert_array_equal(second.top_k_indices, [[1, 0]])
        np.testing.assert_allclose(second.top_k_probabilities, [[5.0, 0.0]])
        assert second.output.top_k_labels == (("b", "a"),)
        assert second.step_count == 5
        none = session.feed(np.array([1], dtype=np.int64), output="none")
        assert none.tensor is None and none.labels == ("c",)


def test_feed_sends_the_expected_step_count(client: Client, fake_server: FakeServer) -> None:
    with client.session(MODEL) as session:
        session.feed([0, 0])
        session.feed([1])
    sent = [r.expected_step_count for r in fake_server.state.step_requests]
    assert sent == [0, 2]


def test_invalid_input_raises_invalid_argument_naming_the_field(client: Client) -> None:
    with client.session(MODEL) as session:
        session.feed([1])
        with pytest.raises(InvalidArgument) as caught:
            session.feed([0, 9])
        assert caught.value.field == "input.tokens.ids[1]"
        assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "outside" in caught.value.message
        # Nothing changed: the next step continues from step 1.
        assert session.step_count == 1
        np.testing.assert_array_equal(session.feed([0]).tensor, expected_logits([0], 1))


def test_unknown_model_and_bidirectional_model_errors(client: Client) -> None:
    with pytest.raises(NotFound) as caught:
        client.session("nope")
    assert caught.value.field == "model.name"
    with pytest.raises(FailedPrecondition):
        client.session(BIDIRECTIONAL)


def test_out_of_order_step_is_refused_then_resynchronised(
    client: Client, fake_server: FakeServer
) -> None:
    with client.session(MODEL) as session:
        session.feed([0])
        fake_server.state.sessions[session.session_id] += 2  # another writer stepped it
        with pytest.raises(Aborted):
            session.feed([1])
        assert session.step_count is None  # uncertain: the next feed asks the server first
        output = session.feed([1])
        np.testing.assert_array_equal(output.tensor, expected_logits([1], 3))
        assert output.step_count == 4


def test_idempotent_calls_are_retried_on_unavailable(
    client: Client, fake_server: FakeServer
) -> None:
    fake_server.state.unavailable = {"ListModels": 2, "Step": 1}
    assert len(client.models()) == 2
    assert fake_server.state.calls.count("ListModels") == 3
    with client.session(MODEL) as session:
        output = session.feed([2])  # carries expected_step_count, so it is retried
    assert output.step_count == 1
    assert fake_server.state.calls.count("Step") == 2


def test_retries_stop_after_the_policy_attempts(client: Client, fake_server: FakeServer) -> None:
    fake_server.state.unavailable = {"ListModels": 5}
    with pytest.raises(Unavailable):
        client.models()
    assert fake_server.state.calls.count("ListModels") == 3


def test_non_idempotent_calls_are_not_retried(client: Client, fake_server: FakeServer) -> None:
    fake_server.state.unavailable = {"CreateSession": 1}
    with pytest.raises(Unavailable):
        client.session(MODEL)
    assert fake_server.state.calls.count("CreateSession") == 1


def test_unreachable_server_raises_unavailable_within_the_deadline() -> None:
    client = Client("127.0.0.1:1", timeout=0.5, retry=FAST_RETRY)
    with client, pytest.raises(RnnServeError) as caught:
        client.models()
    assert caught.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def test_stream_yields_one_output_per_input_and_survives_in_band_errors(client: Client) -> None:
    with client.session(MODEL) as session:
        stream = session.stream([[0], "ab", [7], [3]])
        first = next(stream)
        np.testing.assert_array_equal(first.tensor, expected_logits([0], 0))
        assert stream.session is not None and stream.session.session_id == session.session_id
        assert next(stream).step_count == 3
        with pytest.raises(InvalidArgument) as caught:
            next(stream)
        assert caught.value.field == "step.tokens.ids[0]"
        last = next(stream)  # the stream and the state carried on
        np.testing.assert_array_equal(last.tensor, expected_logits([3], 3))
        with pytest.raises(StopIteration):
            next(stream)
        assert session.step_count == 4


def test_stream_results_yield_errors_in_place(client: Client) -> None:
    with client.session(MODEL) as session:
        results = list(session.stream(iter([[1], [1, 99], b"bytes", [2]])).results())
    assert [type(r).__name__ for r in results] == [
        "StepOutput",
        "InvalidArgument",
        "InvalidArgument",
        "StepOutput",
    ]
    assert results[3].step_count == 2  # type: ignore[union-attr]


def test_stream_on_a_closed_session_raises_not_found(client: Client) -> None:
    session = client.session(MODEL)
    session.close()
    with pytest.raises(NotFound):
        list(session.stream([[0]]))


def test_generate_streams_text_pieces_and_finish_reason(client: Client) -> None:
    generation = client.generate(MODEL, "ab", max_tokens=6, seed=1, stop=["da"])
    pieces = list(generation)
    assert pieces == ["b", "c", "d", "a"]
    assert generation.text == "bcda" and generation.finish_reason is FinishReason.STOP
    assert generation.token_ids == [1, 2, 3, 0]
    assert generation.tokens[-1].step_count == 6  # prompt (2) + 4 tokens


def test_session_generate_continues_the_state(client: Client) -> None:
    with client.session(MODEL) as session:
        session.feed([0, 0])
        text = session.generate(max_tokens=3, seed=0).read()
        assert text == "abc"
        assert session.step_count == 5
        np.testing.assert_array_equal(session.feed([1]).tensor, expected_logits([1], 5))


def test_generation_can_be_cancelled(client: Client, fake_server: FakeServer) -> None:
    generation = client.generate(MODEL, max_tokens=10_000)
    assert next(generation) == "a"
    generation.cancel()
    assert list(generation) == []
    assert fake_server.state.generate_cancelled.wait(5)


def test_snapshot_restore_reset_and_close(client: Client, fake_server: FakeServer) -> None:
    with client.session(MODEL) as session:
        session.feed([0, 1, 2])
        snapshot = session.snapshot()
        assert snapshot == b"snap:3"
        with client.restore(snapshot) as restored:
            assert restored.session_id != session.session_id and restored.step_count == 3
            np.testing.assert_array_equal(restored.feed([0]).tensor, expected_logits([0], 3))
        assert session.reset().step_count == 0 and session.step_count == 0
        assert session.describe().step_count == 0
    assert session.session_id in fake_server.state.closed
    session.close()  # closing twice is harmless
    with pytest.raises(InvalidArgument) as caught:
        client.restore(b"garbage")
    assert caught.value.field == "snapshot"


def test_attach_resumes_an_existing_session(client: Client) -> None:
    with client.session(MODEL) as session:
        session.feed([0, 1])
        attached = client.attach(session.session_id)
        assert attached.step_count == 2 and attached.model.name == MODEL
        np.testing.assert_array_equal(attached.feed([2]).tensor, expected_logits([2], 2))


def test_predict_runs_each_sequence_from_the_initial_state(client: Client) -> None:
    outputs = client.predict(BIDIRECTIONAL, [[0, 1], "dd"], output="probabilities")
    assert len(outputs) == 2
    np.testing.assert_array_equal(outputs[1].argmax, [0, 0])
    assert outputs[1].step_count == 2
    with pytest.raises(InvalidArgument) as caught:
        client.predict(BIDIRECTIONAL, [[0], [5]])
    assert caught.value.field == "sequences[1].tokens.ids[0]"


def test_text_the_vocabulary_cannot_encode_goes_to_the_server(client: Client) -> None:
    with client.session(MODEL) as session, pytest.raises(InvalidArgument) as caught:
        session.feed("abz")
    assert caught.value.field == "input.text[2]"


def test_deadline_exceeded_makes_the_step_count_uncertain(
    client: Client, fake_server: FakeServer
) -> None:
    with client.session(MODEL) as session:
        session.feed([0])
        fake_server.state.delay = {"Step": 0.3}
        with pytest.raises(DeadlineExceeded):
            session.feed([1], timeout=0.05)
        assert session.step_count is None
        fake_server.state.delay = {}
        time.sleep(0.4)  # let the late step finish on the server
        # The late step did run on the server: the client asks before the next step.
        assert session.feed([2]).step_count == 3
    assert "GetSession" in fake_server.state.calls


def test_a_session_whose_model_cannot_be_read_is_closed_again(
    client: Client, fake_server: FakeServer
) -> None:
    fake_server.state.unavailable = {"GetModel": 10}
    with pytest.raises(Unavailable):
        client.session(MODEL)
    assert fake_server.state.closed == {"s1"}


def test_stream_deadline_while_waiting_for_input_raises_instead_of_hanging(
    client: Client,
) -> None:
    def slow_inputs() -> Iterator[list[int]]:
        yield [0]
        time.sleep(1.0)
        yield [1]

    with client.session(MODEL) as session:
        stream = session.stream(slow_inputs(), timeout=0.3)
        assert next(stream).step_count == 1
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            next(stream)
        assert time.monotonic() - started < 0.9
        assert session.step_count is None


def test_open_stream_feeds_one_message_at_a_time(client: Client, fake_server: FakeServer) -> None:
    with client.session(MODEL) as session:
        with session.open_stream() as stream:
            assert stream.session.session_id == session.session_id
            out = stream.feed("a")
            # Each reply can decide the next input: follow the argmax three times.
            for _ in range(3):
                out = stream.feed(list(out.argmax))  # type: ignore[arg-type]
            assert out.step_count == 4 and session.step_count == 4
            with pytest.raises(InvalidArgument) as caught:
                stream.feed([42])
            assert caught.value.field == "step.tokens.ids[0]"
            np.testing.assert_array_equal(stream.feed([0]).tensor, expected_logits([0], 4))
            assert stream.snapshot() == b"snap:0"
            assert stream.reset().step_count == 0 and session.step_count == 0
        assert fake_server.state.calls.count("Stream") == 1
        assert session.session_id not in fake_server.state.closed  # the session outlives it
        with pytest.raises(RnnServeError):
            stream.feed([0])
