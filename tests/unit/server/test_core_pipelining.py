"""step_many: several messages of one session in one model call, with step's outcomes each."""

from __future__ import annotations

import numpy as np
import tiny_models as tm
from helpers_core import ME, feed, frames, tokens, twin_session
from rnnserve.server.domain import OutputFormat, OutputOptions, OutputSteps, StepOutcome
from rnnserve.server.engine import InferenceEngine
from rnnserve.server.errors import InvalidInput

PREFIX = tokens(1, 5)


async def test_messages_run_together_equal_one_by_one(engine: InferenceEngine) -> None:
    together = await twin_session(engine, tm.LSTM_LM, PREFIX)
    apart = await twin_session(engine, tm.LSTM_LM, PREFIX)
    messages = [tokens(seed, length) for seed, length in ((2, 3), (3, 1), (4, 4))]
    options = [
        OutputOptions(),
        OutputOptions(steps=OutputSteps.LAST),
        OutputOptions(format=OutputFormat.TOP_K, top_k=2),
    ]
    calls_before = engine.model_statistics(tm.LSTM_LM, 2)[0].executions
    outcomes = await engine.step_many(together, ME, list(zip(messages, options, strict=True)))
    assert engine.model_statistics(tm.LSTM_LM, 2)[0].executions == calls_before + 1
    step_count = len(PREFIX)
    for message, option, outcome in zip(messages, options, outcomes, strict=True):
        expected = await engine.step(apart, ME, message, option)
        assert isinstance(outcome, StepOutcome)
        step_count += len(message)
        assert (outcome.steps, outcome.step_count) == (len(message), step_count)
        mine, theirs = outcome.outputs[0], expected.outputs[0]
        if option.format is OutputFormat.TOP_K:
            np.testing.assert_array_equal(mine.top_k_indices, theirs.top_k_indices)
        else:
            np.testing.assert_allclose(mine.tensor, theirs.tensor, rtol=1e-6, atol=1e-6)
    # the sessions continue identically
    np.testing.assert_allclose(
        await feed(engine, together, tokens(9, 2)), await feed(engine, apart, tokens(9, 2)), 1e-6
    )


async def test_a_refused_message_leaves_the_others_running(engine: InferenceEngine) -> None:
    together = await twin_session(engine, tm.REGRESSOR, frames(1, 3, 4))
    apart = await twin_session(engine, tm.REGRESSOR, frames(1, 3, 4))
    bad = frames(2, 2, 5)  # wrong width
    messages = [
        (frames(3, 2, 4), OutputOptions()),
        (bad, OutputOptions()),
        (frames(4, 1, 4), OutputOptions()),
    ]
    outcomes = await engine.step_many(together, ME, messages, input_field="step")
    assert isinstance(outcomes[1], InvalidInput) and outcomes[1].field == "step.features.shape"
    first, third = outcomes[0], outcomes[2]
    assert isinstance(first, StepOutcome) and isinstance(third, StepOutcome)
    assert (first.step_count, third.step_count) == (5, 6)  # the refused message took no step
    for data, outcome in ((messages[0][0], first), (messages[2][0], third)):
        expected = await engine.step(apart, ME, data, OutputOptions())
        np.testing.assert_allclose(outcome.outputs[0].tensor, expected.outputs[0].tensor, 1e-6)


async def test_a_refused_output_option_names_the_output_field(engine: InferenceEngine) -> None:
    session = await twin_session(engine, tm.LSTM_LM, PREFIX)
    bad = OutputOptions(format=OutputFormat.TOP_K, top_k=0)
    outcomes = await engine.step_many(
        session, ME, [(tokens(2, 1), bad), (tokens(3, 1), OutputOptions())], input_field="step"
    )
    assert isinstance(outcomes[0], InvalidInput) and outcomes[0].field == "output.top_k"
    assert isinstance(outcomes[1], StepOutcome) and outcomes[1].step_count == len(PREFIX) + 1
