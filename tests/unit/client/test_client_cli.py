"""The rnnserve-client command line against a fake server."""

from __future__ import annotations

import io
import json

import pytest
from client_fakes import BIDIRECTIONAL, MODEL, VOCABULARY, FakeServer
from rnnserve.client.cli import main


def run(fake: FakeServer, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(["--target", fake.target, "--timeout", "10", *argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_models_list_and_show(fake_server: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(fake_server, capsys, "models")
    assert status == 0 and MODEL in out and "predict-only" in out
    status, out, _ = run(fake_server, capsys, "--json", "models", "show", MODEL)
    described = json.loads(out)
    assert status == 0 and described["vocabulary"] == VOCABULARY
    assert described["max_steps_per_message"] == 8
    status, out, _ = run(fake_server, capsys, "models", "show", MODEL)
    assert "vocabulary of 5" in out and "metric loss: 1.5" in out


def test_generate_prints_the_text_and_json(
    fake_server: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = run(fake_server, capsys, "generate", MODEL, "ab", "--max-tokens", "3")
    assert status == 0 and out == "ababc\n"
    status, out, _ = run(
        fake_server,
        capsys,
        "--json",
        "generate",
        MODEL,
        "--max-tokens",
        "9",
        "--seed",
        "2",
        "--stop",
        "a",
    )
    assert json.loads(out) == {
        "text": "cda",
        "token_ids": [2, 3, 0],
        "finish_reason": "stop",
        "session_id": "s2",
    }


def test_stream_prints_one_line_per_step_from_stdin(
    fake_server: FakeServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("ab\nc\n"))
    status, out, _ = run(fake_server, capsys, "--json", "stream", MODEL, "--top-k", "2")
    lines = [json.loads(line) for line in out.splitlines()]
    assert status == 0 and [line["step_count"] for line in lines] == [1, 2, 3]
    assert [line["outputs"][0]["labels"] for line in lines] == [["b"], ["c"], ["d"]]
    assert lines[0]["outputs"][0]["top_k"][0]["labels"] == ["b", "a"]
    status, out, _ = run(fake_server, capsys, "stream", MODEL, "--chunk", "2", "abc")
    assert status == 0 and len(out.splitlines()) == 2 and "'d'" in out.splitlines()[1]


def test_stream_reports_a_refused_input_and_carries_on(
    fake_server: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run(fake_server, capsys, "stream", MODEL, "--tokens", "0", "9", "1 2")
    assert status == 1
    assert "INVALID_ARGUMENT" in err and "step.tokens.ids[0]" in err
    assert len(out.splitlines()) == 2 and "step     3" in out


def test_predict_prints_labels_per_sequence(
    fake_server: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = run(fake_server, capsys, "predict", BIDIRECTIONAL, "ab", "dd")
    assert status == 0
    assert out.splitlines() == ["'ab' -> logits: ['b', 'c']", "'dd' -> logits: ['a', 'a']"]
    status, out, _ = run(
        fake_server,
        capsys,
        "--json",
        "predict",
        BIDIRECTIONAL,
        "--tokens",
        "--output",
        "raw",
        "--last",
        "0,1",
    )
    assert json.loads(out)["outputs"][0]["tensor"] == [[0.0, 0.0, 2.0, 0.0, 0.0]]


def test_errors_exit_1_with_the_code(
    fake_server: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err = run(fake_server, capsys, "models", "show", "missing")
    assert status == 1 and "NOT_FOUND" in err and "model.name" in err
