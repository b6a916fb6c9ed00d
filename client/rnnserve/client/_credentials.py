"""How a client proves who it is: TLS channel credentials from PEM files and the bearer token.

Shared by the clients, their command lines (the same flags everywhere) and the load generator.
A token is only ever put into call metadata; no message or repr here repeats it.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

AUTHORIZATION_KEY = "authorization"
# gRPC's option for checking the server certificate against another name than the target's host
# (a server reached by IP address whose certificate names a DNS name, or the other way round).
SERVER_NAME_OPTION = "grpc.ssl_target_name_override"


class CredentialError(ValueError):
    """A token or TLS option that cannot be used (the message never repeats a token)."""


def checked_token(token: str) -> str:
    """The token without surrounding whitespace; CredentialError (never quoting it) when it
    cannot be sent as one `authorization: Bearer` header value."""
    token = token.strip()
    if not token:
        raise CredentialError("token: empty")
    if any(c.isspace() or not c.isprintable() or not c.isascii() for c in token):
        raise CredentialError("token: holds whitespace or a non-printable or non-ASCII character")
    return token


def bearer_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """The `authorization: Bearer <token>` metadata item for `token` (none for None)."""
    if token is None:
        return ()
    return ((AUTHORIZATION_KEY, f"Bearer {checked_token(token)}"),)


def read_token_file(path: str | Path) -> str:
    """The token stored in a file (its content without surrounding whitespace)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) else "not UTF-8 text"
        raise CredentialError(f"token file {path}: cannot read it: {reason}") from None
    try:
        return checked_token(text)
    except CredentialError as err:
        raise CredentialError(f"token file {path}: {err}") from None


def _read(path: str | Path | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise CredentialError(f"{what} {path}: cannot read it: {err.strerror}") from None


def channel_credentials(
    *,
    tls: bool = False,
    tls_ca: str | Path | None = None,
    tls_cert: str | Path | None = None,
    tls_key: str | Path | None = None,
) -> grpc.ChannelCredentials | None:
    """TLS credentials when any TLS option is given (None: a plaintext channel).

    `tls_ca` is the PEM bundle the server's certificate must chain to (default: the system's
    roots); `tls_cert` and `tls_key` are a client certificate and its key, for servers that
    require mutual TLS. Raises CredentialError for a certificate without its key or an unreadable
    file.
    """
    if (tls_cert is None) != (tls_key is None):
        raise CredentialError("tls_cert and tls_key: give both (a client certificate and its key)")
    if not (tls or tls_ca or tls_cert):
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=_read(tls_ca, "tls_ca"),
        private_key=_read(tls_key, "tls_key"),
        certificate_chain=_read(tls_cert, "tls_cert"),
    )


def channel_options(
    options: list[tuple[str, Any]], tls_server_name: str | None
) -> list[tuple[str, Any]]:
    """Channel options with the server-name override added when one is given."""
    if tls_server_name:
        return [*options, (SERVER_NAME_OPTION, tls_server_name)]
    return options


TOKEN_ENV = "RNNSERVE_TOKEN"


@dataclass(frozen=True)
class ConnectionArgs:
    """The credential options of a command line, resolved (the token read from its file)."""

    token: str | None = field(default=None, repr=False)
    tls: bool = False
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_server_name: str | None = None

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for ``Client``/``AsyncClient``."""
        return {
            "token": self.token,
            "tls": self.tls,
            "tls_ca": self.tls_ca,
            "tls_cert": self.tls_cert,
            "tls_key": self.tls_key,
            "tls_server_name": self.tls_server_name,
        }


def add_connection_flags(parser: argparse.ArgumentParser) -> None:
    """--token, --token-file and the TLS flags every rnnserve command line shares."""
    group = parser.add_argument_group("authentication and TLS")
    add = group.add_argument
    add(
        "--token",
        help=f"bearer token (default: ${TOKEN_ENV}); prefer --token-file or the environment, "
        "as other users can read a command line",
    )
    add("--token-file", metavar="PATH", help="file holding the bearer token")
    add("--tls", action="store_true", help="use TLS, trusting the system's root certificates")
    add("--tls-ca", metavar="PEM", help="CA bundle the server's certificate must chain to")
    add("--tls-cert", metavar="PEM", help="client certificate (servers requiring mutual TLS)")
    add("--tls-key", metavar="PEM", help="private key of --tls-cert")
    add("--tls-server-name", metavar="NAME", help="name to check the server certificate against")


def connection_from_args(args: argparse.Namespace) -> ConnectionArgs:
    """Resolve the flags of add_connection_flags; CredentialError for a conflict or a bad file."""
    if args.token is not None and args.token_file is not None:
        raise CredentialError("--token and --token-file: give one of them")
    token = args.token
    if args.token_file is not None:
        token = read_token_file(args.token_file)
    elif token is None:
        token = os.environ.get(TOKEN_ENV) or None
    if token is not None:
        token = checked_token(token)
    if (args.tls_cert is None) != (args.tls_key is None):
        raise CredentialError(
            "--tls-cert and --tls-key: give both (a client certificate and its key)"
        )
    return ConnectionArgs(
        token=token,
        tls=args.tls,
        tls_ca=args.tls_ca,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_server_name=args.tls_server_name,
    )
