"""`rnnserve-client` against a real in-process server over the tiny ONNX models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from client_server import ServerThread
from rnnserve.client import Client
from rnnserve.client.cli import main
from tiny_models import CLASSIFIER, LM_VOCABULARY, LSTM_LM, RNN_LM, TAGGER, run_whole_sequence


def run(server: ServerThread, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    status = main(["--target", server.target, "--timeout", "30", *argv])
    return status, capsys.readouterr().out


def test_models_and_generate(server: ServerThread, capsys: pytest.CaptureFixture[str]) -> None:
    status, out = run(server, capsys, "--json", "models")
    assert status == 0 and LSTM_LM in {model["name"] for model in json.loads(out)}
    argv = ("--json", "generate", LSTM_LM, "a dog", "--max-tokens", "15", "--seed", "5")
    status, first = run(server, capsys, *argv)
    status_again, second = run(server, capsys, *argv)
    first_run, second_run = json.loads(first), json.loads(second)
    assert status == status_again == 0 and first_run["text"] == second_run["text"]
    assert first_run["session_id"] != second_run["session_id"]  # a fresh session each time
    assert len(first_run["token_ids"]) == 15 and first_run["finish_reason"] == "length"
    with Client(server.target) as client:
        text = client.generate(LSTM_LM, "a dog", max_tokens=15, seed=5).read()
    assert json.loads(first)["text"] == text


def test_stream_prints_each_steps_argmax(
    server: ServerThread, capsys: pytest.CaptureFixture[str], tiny_repository: Path
) -> None:
    status, out = run(server, capsys, "--json", "stream", RNN_LM, "--chunk", "3", "cabbage")
    lines = [json.loads(line) for line in out.splitlines()]
    assert status == 0 and [line["step_count"] for line in lines] == [3, 6, 7]
    ids = np.array([LM_VOCABULARY.index(c) for c in "cabbage"], dtype=np.int64)
    expected = run_whole_sequence(tiny_repository / RNN_LM, ids)["logits"].argmax(axis=1)
    assert [line["outputs"][0]["labels"][-1] for line in lines] == [
        LM_VOCABULARY[expected[i]] for i in (2, 5, 6)
    ]


def test_predict_tagger_and_features(
    server: ServerThread, capsys: pytest.CaptureFixture[str], tiny_repository: Path
) -> None:
    status, out = run(server, capsys, "--json", "predict", TAGGER, "abc", "--output", "raw")
    ids = np.array([0, 1, 2], dtype=np.int64)
    expected = run_whole_sequence(tiny_repository / TAGGER, ids)["logits"]
    np.testing.assert_allclose(json.loads(out)["outputs"][0]["tensor"], expected, atol=1e-5)
    status, out = run(server, capsys, "predict", CLASSIFIER, "--last", "[[0.5, 1, -1], [2, 0, 0]]")
    assert status == 0 and out.startswith("[[0.5, 1.0, -1.0], [2.0, 0.0, 0.0]] -> logits: [")
