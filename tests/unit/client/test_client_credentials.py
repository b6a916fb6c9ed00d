"""Bearer tokens and TLS options of the client library, its CLI and the load generator."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
from pathlib import Path

import pytest
from client_fakes import MODEL, FakeServer
from rnnserve.client import AsyncClient, Client
from rnnserve.client._credentials import (
    CredentialError,
    add_connection_flags,
    bearer_metadata,
    channel_credentials,
    connection_from_args,
)
from rnnserve.client.cli import main as client_main
from rnnserve.client.load.cli import build_parser as load_parser
from rnnserve.client.load.cli import config_from_args
from rnnserve.client.load.config import ConfigError, LoadConfig

TOKEN = "s3cret-token-value"


def test_every_call_carries_the_token_streams_included(fake_server: FakeServer) -> None:
    with Client(fake_server.target, token=TOKEN, client_id="worker", timeout=10) as client:
        client.models()
        with client.session(MODEL) as session:
            session.feed([0])
            with session.open_stream() as stream:
                stream.feed([1])
            list(session.generate([0], max_tokens=2))
        assert TOKEN not in repr(client)
    calls = fake_server.state.calls
    assert {"ListModels", "CreateSession", "Step", "Stream", "Generate"} <= set(calls)
    for metadata in fake_server.state.metadata:
        assert metadata["authorization"] == f"Bearer {TOKEN}"
        assert metadata["x-client-id"] == "worker"


def test_the_async_client_carries_the_token(fake_server: FakeServer) -> None:
    async def use() -> None:
        async with AsyncClient(fake_server.target, token=TOKEN, timeout=10) as client:
            await client.models()
            async with client.session(MODEL) as session:
                await session.feed([0])

    asyncio.run(use())
    assert len(fake_server.state.metadata) >= 3
    assert all(m["authorization"] == f"Bearer {TOKEN}" for m in fake_server.state.metadata)


@pytest.mark.parametrize("token", ["", "two words", "line\nbreak", "caf\u00e9"])
def test_a_token_that_cannot_be_sent_is_refused_without_echo(token: str) -> None:
    with pytest.raises(CredentialError) as caught:
        Client("127.0.0.1:1", token=token)
    assert token.strip() == "" or token not in str(caught.value)


def test_tls_options_need_a_key_with_a_certificate_and_readable_files(tmp_path: Path) -> None:
    with pytest.raises(CredentialError, match="tls_cert and tls_key: give both"):
        channel_credentials(tls_cert=tmp_path / "client.pem")
    with pytest.raises(CredentialError, match=r"tls_ca .*missing\.pem: cannot read it"):
        channel_credentials(tls_ca=tmp_path / "missing.pem")
    assert channel_credentials() is None
    assert channel_credentials(tls=True) is not None
    assert bearer_metadata(None) == ()


def _flags(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_connection_flags(parser)
    return parser.parse_args(argv)


def test_command_line_tokens_come_from_a_file_the_flag_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(f"  {TOKEN}\n")
    monkeypatch.setenv("RNNSERVE_TOKEN", "from-the-environment")
    assert connection_from_args(_flags("--token-file", str(token_file))).token == TOKEN
    assert connection_from_args(_flags("--token", "given")).token == "given"
    assert connection_from_args(_flags()).token == "from-the-environment"
    assert TOKEN not in repr(connection_from_args(_flags("--token-file", str(token_file))))
    with pytest.raises(CredentialError, match="give one of them"):
        connection_from_args(_flags("--token", "a", "--token-file", str(token_file)))
    monkeypatch.delenv("RNNSERVE_TOKEN")
    assert connection_from_args(_flags()).token is None


def test_the_client_cli_sends_the_token_file(
    fake_server: FakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    argv = ["--target", fake_server.target, "--token-file", str(token_file), "models"]
    assert client_main(argv) == 0
    assert fake_server.state.metadata[-1]["authorization"] == f"Bearer {TOKEN}"
    assert TOKEN not in capsys.readouterr().out


def test_the_load_generator_takes_the_flags_and_never_reports_the_token(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    args = load_parser().parse_args(
        ["--token-file", str(token_file), "--tls-ca", "ca.pem", "--tls-server-name", "rnn.local"]
    )
    config = config_from_args(args)
    assert (config.token, config.tls_ca, config.tls_server_name) == (TOKEN, "ca.pem", "rnn.local")
    assert config.secure
    assert ("authorization", f"Bearer {TOKEN}") in config.call_metadata
    assert TOKEN not in repr(config)
    with pytest.raises(ConfigError, match="tls_cert and tls_key"):
        LoadConfig(tls_cert="client.pem")
    assert dataclasses.replace(config, token=None).call_metadata == (
        ("x-client-id", "rnnserve-load"),
    )
