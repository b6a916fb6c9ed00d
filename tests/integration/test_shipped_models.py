"""The shipped repository served end to end: word-level text, labels, whole-sequence tagging."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from rnnserve.v1 import rnnserve_pb2 as pb
from server_helpers import Running, expect_error, identity, open_session, step

REPOSITORY = Path(__file__).resolve().parents[2] / "models" / "repository"
LAST_LABEL = pb.OutputOptions(steps=pb.OUTPUT_STEPS_LAST, format=pb.OUTPUT_FORMAT_NONE)

pytestmark = pytest.mark.skipif(
    not (REPOSITORY / "sentiment-gru" / "model.json").exists()
    or not (REPOSITORY / "pos-bilstm" / "model.json").exists(),
    reason="the shipped sentiment and tagger models are not in models/repository",
)


async def test_sentiment_reads_text_as_words(serve: Callable[..., Awaitable[Running]]) -> None:
    rpc = await serve(REPOSITORY, models=["sentiment-gru"])
    model = await rpc.stub.GetModel(pb.GetModelRequest(model=pb.ModelRef(name="sentiment-gru")))
    assert model.model.token_pattern and model.model.lowercase
    assert model.model.tokenizer == "lower-words-v1"  # the tokenizer it was trained with

    async def label(text: str) -> str:
        reply = await rpc.stub.Predict(
            pb.PredictRequest(
                model=pb.ModelRef(name="sentiment-gru"),
                sequences=[pb.StepInput(text=text)],
                output=LAST_LABEL,
            )
        )
        result = reply.results[0]
        assert result.steps == len(text.split())  # one step per word, not per character
        return result.outputs[0].labels[-1]

    assert await label("A wonderful , moving and beautiful film") == "positive"
    assert await label("A dull , boring and stupid mess") == "negative"


async def test_tagger_tags_each_word(serve: Callable[..., Awaitable[Running]]) -> None:
    rpc = await serve(REPOSITORY, models=["pos-bilstm"])
    reply = await rpc.stub.Predict(
        pb.PredictRequest(
            model=pb.ModelRef(name="pos-bilstm"),
            sequences=[pb.StepInput(text="The jury said it did not like the law .")],
            output=pb.OutputOptions(format=pb.OUTPUT_FORMAT_NONE),
        )
    )
    tags = list(reply.results[0].outputs[0].labels)
    assert len(tags) == 10
    assert tags[0] == "at" and tags[1] == "nn" and tags[-1] == "."  # Brown: article, noun, stop


async def test_tagger_reads_ordinary_text_as_brown_tokens(
    serve: Callable[..., Awaitable[Running]],
) -> None:
    # brown-v1 (the manifest's tokenizer) splits text into the tokens the tagger trained on:
    # Mr. keeps its period, the quotes become `` and '', the final period is its own token
    rpc = await serve(REPOSITORY, models=["pos-bilstm"])
    reply = await rpc.stub.Predict(
        pb.PredictRequest(
            model=pb.ModelRef(name="pos-bilstm"),
            sequences=[pb.StepInput(text='Mr. Smith said, "It\'s here."')],
            output=pb.OutputOptions(format=pb.OUTPUT_FORMAT_NONE),
        )
    )
    tags = list(reply.results[0].outputs[0].labels)
    assert tags == ["np", "np", "vbd", ",", "``", "pps+bez", "rb", ".", "''"]


async def test_text_with_no_words_is_refused_and_the_server_keeps_serving(
    serve: Callable[..., Awaitable[Running]],
) -> None:
    # Text of separators only gives a word model no tokens: onnxruntime's recurrent kernels abort
    # the whole process on an empty sequence (the fuzzer found it), so it must never get there.
    rpc = await serve(REPOSITORY, models=["sentiment-gru", "pos-bilstm"])
    session = await open_session(rpc.stub, "sentiment-gru")
    await step(rpc.stub, session, pb.StepInput(text="a fine film"))
    for text in (" ", " \t\n "):
        err = await expect_error(step(rpc.stub, session, pb.StepInput(text=text)))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (err.details() or "").startswith("input.text: text has no tokens"), err.details()
        err = await expect_error(
            rpc.stub.Predict(
                pb.PredictRequest(
                    model=pb.ModelRef(name="pos-bilstm"), sequences=[pb.StepInput(text=text)]
                )
            )
        )
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = await rpc.stub.GetSession(
        pb.GetSessionRequest(session_id=session), metadata=identity("alice")
    )
    assert info.session.step_count == 3  # the three words before; the refused texts took none
    assert (await step(rpc.stub, session, pb.StepInput(text="boring"))).steps == 1
