"""`rnnserve` command line: flags mirror Settings, `models list`, `healthcheck` exit codes."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from rnnserve.server import cli
from rnnserve.server.settings import Settings


def _serve_parser_flags() -> dict[str, str]:
    parser = cli.build_parser()
    serve = parser._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    return {
        a.dest: a.option_strings[0] for a in serve._actions if a.option_strings[1:2] != ["--help"]
    }


def test_every_settings_field_has_its_flag() -> None:
    flags = _serve_parser_flags()
    for name in Settings.model_fields:
        assert flags.get(name) == "--" + name.replace("_", "-")


def _settings(argv: list[str]) -> Settings:
    args = cli.build_parser().parse_args(["serve", *argv])
    return cli.settings_from_args(args)


def test_flags_override_environment_which_overrides_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RNNSERVE_SESSION_TTL_S", "5")
    monkeypatch.setenv("RNNSERVE_MAX_SESSIONS", "7")
    settings = _settings(["--max-sessions", "3", "--port", "0", "--log-json"])
    assert settings.session_ttl_s == 5.0  # from the environment
    assert settings.max_sessions == 3  # the flag wins
    assert settings.port == 0 and settings.log_json is True
    assert settings.max_queue == Settings.model_fields["max_queue"].default


def test_typed_flags(tmp_path: Path) -> None:
    settings = _settings(
        [
            "--models", "a", "b",
            "--snapshot-dir", str(tmp_path),
            "--snapshot-secret", "s3cret",
            "--log-level", "debug",
            "--metrics-port", "-1",
            "--no-log-json",
        ]
    )  # fmt: skip
    assert settings.models == ["a", "b"]
    assert settings.snapshot_dir == tmp_path
    assert settings.snapshot_secret is not None
    assert settings.snapshot_secret.get_secret_value() == "s3cret"
    assert settings.log_level == "debug" and settings.metrics_port == -1
    assert settings.log_json is False


def test_invalid_flag_value_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as caught:
        cli.build_parser().parse_args(["serve", "--log-level", "loud"])
    assert caught.value.code == 2


def test_models_list_prints_a_table(
    tiny_repository: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["models", "list", "--model-repository", str(tiny_repository)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "NAME",
        "VERSIONS",
        "TASK",
        "CELL",
        "INPUT",
        "STREAMABLE",
        "STATE",
        "BYTES",
    ]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) == {
        "tiny-rnn-lm", "tiny-gru-lm", "tiny-lstm-lm", "tiny-regressor", "tiny-classifier",
        "tiny-tagger",
    }  # fmt: skip
    assert rows["tiny-lstm-lm"][1:5] == ["1,2", "language-model", "lstm", "tokens[20]"]
    assert rows["tiny-lstm-lm"][6] == str(2 * 2 * 12 * 4)  # h and c, [layers=2, hidden=12] float32
    assert rows["tiny-tagger"][3:6] == ["lstm-bi", "tokens[20]", "no"]
    assert rows["tiny-regressor"][4] == "features[4]"


def test_models_list_json_and_selection(
    tiny_repository: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["models", "list", "--model-repository", str(tiny_repository), "--json"]
    assert cli.main([*argv, "--models", "tiny-gru-lm"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["tiny-gru-lm"]
    assert rows[0]["state_bytes"] == str(10 * 4)


def test_models_list_on_a_missing_repository_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["models", "list", "--model-repository", str(tmp_path / "nope")]) == 1
    assert "not a directory" in capsys.readouterr().err


def test_healthcheck_unreachable_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code = cli.main(["healthcheck", "--port", str(port), "--timeout", "0.5"])
    assert code == cli.HEALTH_EXIT_UNREACHABLE
    assert "unreachable" in capsys.readouterr().err


def test_models_inspect_proposes_a_servable_manifest(
    tiny_repository: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from rnnserve.server.manifest import ModelManifest
    from tiny_models import LSTM_LM

    onnx_file = tiny_repository / LSTM_LM / "1" / "model.onnx"
    assert cli.main(["models", "inspect", str(onnx_file), "--name", "mine"]) == 0
    proposal = ModelManifest.model_validate_json(capsys.readouterr().out)
    assert (proposal.name, proposal.cell, proposal.streamable) == ("mine", "lstm", True)
    assert proposal.input.kind == "tokens" and len(proposal.states) == 2  # h and c


def test_models_inspect_refuses_a_file_that_is_not_onnx(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bogus = tmp_path / "model.onnx"
    bogus.write_bytes(b"not a graph")
    assert cli.main(["models", "inspect", str(bogus)]) == 1
    assert str(bogus) in capsys.readouterr().err
