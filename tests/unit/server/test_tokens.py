"""The tokens file, token lookup, and the start-time exposure rule."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest
from rnnserve.server import cli
from rnnserve.server.security import SecurityConfigError, check_exposure, is_loopback, read_pem
from rnnserve.server.tokens import (
    TokenFileError,
    TokenTable,
    bearer_token,
    hash_token,
    new_token,
    token_line,
)

ALICE_TOKEN = "alice-secret-token-value"
BOB_TOKEN = "bob-secret-token-value"


def table_text() -> str:
    return "\n".join(
        [
            "# rnnserve tokens",
            "",
            token_line(ALICE_TOKEN, "alice"),
            f"  {hash_token(BOB_TOKEN).upper().replace('SHA256', 'sha256')}\tbob@team  ",
        ]
    )


def test_hash_token_is_the_sha256_of_the_utf8_token() -> None:
    assert hash_token("abc") == "sha256:" + hashlib.sha256(b"abc").hexdigest()


def test_tokens_map_to_their_principals_and_others_to_none() -> None:
    table = TokenTable.parse(table_text())
    assert len(table) == 2
    assert table.principal_of(ALICE_TOKEN) == "alice"
    assert table.principal_of(BOB_TOKEN) == "bob@team"
    assert table.principal_of("alice") is None
    assert table.principal_of(ALICE_TOKEN + " ") is None
    assert table.principal_of("") is None


def test_a_table_loaded_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(table_text())
    assert TokenTable.load(path).principals == {"alice", "bob@team"}


def test_new_tokens_are_long_random_and_url_safe() -> None:
    tokens = {new_token() for _ in range(50)}
    assert len(tokens) == 50
    assert all(len(t) >= 43 and t.replace("-", "").replace("_", "").isalnum() for t in tokens)


@pytest.mark.parametrize(
    ("line", "complaint"),
    [
        (ALICE_TOKEN + " alice", "expected 'sha256:<64 hex digits> <principal>'"),
        ("sha256:" + "ab" * 31 + " alice", "expected"),
        (hash_token(ALICE_TOKEN), "expected"),
        (hash_token(ALICE_TOKEN) + " two words", "expected"),
        (hash_token(ALICE_TOKEN) + " team/alice", "a principal is"),
        (hash_token(ALICE_TOKEN) + " cert:alice", "a principal is"),
    ],
)
def test_a_bad_line_names_file_and_line_but_never_echoes_it(line: str, complaint: str) -> None:
    text = f"# header\n{token_line(BOB_TOKEN, 'bob')}\n{line}\n"
    with pytest.raises(TokenFileError) as caught:
        TokenTable.parse(text, "/etc/rnnserve/tokens")
    message = str(caught.value)
    assert "/etc/rnnserve/tokens line 3" in message
    assert complaint in message
    assert ALICE_TOKEN not in message
    assert line.split()[0] not in message


def test_a_duplicate_hash_and_an_empty_file_are_refused() -> None:
    twice = f"{token_line(BOB_TOKEN, 'bob')}\n{token_line(BOB_TOKEN, 'eve')}\n"
    with pytest.raises(TokenFileError, match="line 2: the same token hash as line 1"):
        TokenTable.parse(twice)
    with pytest.raises(TokenFileError, match="holds no token lines"):
        TokenTable.parse("# only a comment\n\n")


def test_an_unreadable_tokens_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(TokenFileError, match=r"auth_tokens_file: cannot read .*missing"):
        TokenTable.load(tmp_path / "missing")


def test_token_line_refuses_a_principal_that_could_pose_as_a_sub_identity() -> None:
    with pytest.raises(ValueError, match="principal"):
        token_line("t", "alice/bob")


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("example.com", False),
    ],
)
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_an_exposed_listener_needs_authentication_or_an_explicit_opt_in() -> None:
    with pytest.raises(SecurityConfigError) as caught:
        check_exposure("0.0.0.0", authenticated=False, allow_unauthenticated=False)
    message = str(caught.value)
    for fix in ("--auth-tokens-file", "--tls-client-ca-file", "--allow-unauthenticated", "--host"):
        assert fix in message
    check_exposure("0.0.0.0", authenticated=True, allow_unauthenticated=False)
    check_exposure("0.0.0.0", authenticated=False, allow_unauthenticated=True)
    check_exposure("127.0.0.1", authenticated=False, allow_unauthenticated=False)


def test_pem_files_are_checked_without_quoting_them(tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    key.write_text("not a key at all, secret-ish")
    with pytest.raises(SecurityConfigError, match=r"tls_key_file: .* no PEM private key") as e:
        read_pem(key, "tls_key_file", "PRIVATE KEY-----")
    assert "secret-ish" not in str(e.value)
    with pytest.raises(SecurityConfigError, match="tls_cert_file: cannot read"):
        read_pem(tmp_path / "absent.pem", "tls_cert_file", "CERTIFICATE-----")


def test_token_new_prints_the_token_and_its_line_apart(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["token", "new", "--principal", "ci-runner"]) == 0
    captured = capsys.readouterr()
    token = captured.out.strip()
    line = captured.err.strip()
    assert len(token) >= 43 and token not in line
    assert TokenTable.parse(line).principal_of(token) == "ci-runner"


def test_token_hash_reads_stdin(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(ALICE_TOKEN + "\n"))
    assert cli.main(["token", "hash", "--principal", "alice"]) == 0
    assert capsys.readouterr().out.strip() == token_line(ALICE_TOKEN, "alice")
    monkeypatch.setattr("sys.stdin", io.StringIO("\n"))
    assert cli.main(["token", "hash"]) == 2
    assert cli.main(["token", "new", "--principal", "a/b"]) == 2


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer  abc ", "abc"),
        ("Basic abc", None),
        ("Bearer", None),
        ("Bearer a b", None),
        ("Bearer a\x00b", None),
        ("Bearer " + "x" * 1025, None),
    ],
)
def test_bearer_token_parses_one_header_value(header: str, token: str | None) -> None:
    # One parser for the gRPC interceptor and the metrics endpoint.
    assert bearer_token(header) == token
