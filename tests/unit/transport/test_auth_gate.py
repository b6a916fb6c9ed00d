"""The auth gate's pieces without a network: bearer headers, certificate principals, identities."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rnnserve.server.errors import InvalidInput
from rnnserve.server.tokens import TokenTable, token_line
from rnnserve.server.transport.auth import bearer_principal, certificate_principal
from rnnserve.server.transport.context import client_id_from, compose_identity
from rnnserve.server.transport.errors import Unauthenticated, describe

TOKEN = "a-token-only-alice-has"
TABLE = TokenTable.parse(token_line(TOKEN, "alice"))


class FakeContext:
    """What certificate_principal reads from a grpc.aio servicer context."""

    def __init__(self, auth: dict[str, list[bytes]]) -> None:
        self._auth = auth

    def auth_context(self) -> dict[str, list[bytes]]:
        return self._auth


def header(value: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", value),)


@pytest.mark.parametrize(
    ("metadata", "principal"),
    [
        ((), None),
        (header(f"Bearer {TOKEN}"), "alice"),
        (header(f"bearer {TOKEN}"), "alice"),  # the scheme is case-insensitive (RFC 6750)
        ((("x-client-id", "bob"), *header(f"Bearer {TOKEN}")), "alice"),
    ],
)
def test_a_bearer_header_names_its_principal(metadata: Any, principal: str | None) -> None:
    assert bearer_principal(metadata, TABLE) == principal


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        (header("Bearer wrong-token"), "invalid bearer token"),
        (header(f"Basic {TOKEN}"), "malformed authorization header"),
        (header("Bearer"), "malformed authorization header"),
        (header(f"Bearer {TOKEN} extra"), "malformed authorization header"),
        (header(f"Bearer {TOKEN}") * 2, "2 authorization headers; send exactly one"),
    ],
)
def test_a_bad_bearer_header_is_unauthenticated_without_echo(metadata: Any, message: str) -> None:
    with pytest.raises(Unauthenticated) as caught:
        bearer_principal(metadata, TABLE)
    failure = describe(caught.value)
    assert failure.code_name == "UNAUTHENTICATED"
    assert message in failure.message
    assert TOKEN not in failure.message and "wrong-token" not in failure.message


def test_a_certificate_names_cert_and_its_common_name() -> None:
    context = FakeContext({"x509_common_name": [b"device-7"], "transport_security_type": [b"ssl"]})
    assert certificate_principal(context) == "cert:device-7"
    assert certificate_principal(FakeContext({"transport_security_type": [b"ssl"]})) is None


@given(st.text(min_size=1, max_size=64))
def test_no_certificate_name_can_pose_as_a_sub_identity(name: str) -> None:
    context = FakeContext({"x509_common_name": [name.encode("utf-8", "surrogatepass")]})
    principal = certificate_principal(context)
    assert principal is not None and principal.startswith("cert:")
    assert "/" not in principal and ":" not in principal[len("cert:") :]
    assert principal.isprintable() and " " not in principal


def test_identities_compose_principal_and_client_id() -> None:
    assert compose_identity(None, None) == "anonymous"
    assert compose_identity(None, "worker") == "worker"
    assert compose_identity("alice", None) == "alice"
    assert compose_identity("alice", "worker") == "alice/worker"


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ((("x-client-id", "a"), ("x-client-id", "b")), "sent 2 times; send it at most once"),
        ((("x-client-id", "x" * 9),), "9 characters; at most 8 are allowed"),
        ((("x-client-id", "bad\nid"),), "holds a non-printable character"),
        ((("x-client-id", b"\x1b[31m"),), "holds a non-printable character"),
    ],
)
def test_a_bad_client_id_is_invalid_argument(metadata: Any, message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        client_id_from(metadata, max_length=8)
    assert caught.value.field == "metadata.x-client-id"
    assert caught.value.message == message


def test_an_absent_or_empty_client_id_is_none() -> None:
    assert client_id_from((), max_length=8) is None
    assert client_id_from((("x-client-id", ""),), max_length=8) is None
    assert client_id_from((("x-client-id", "worker-1"),), max_length=8) == "worker-1"
