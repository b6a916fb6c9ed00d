"""Start-time security checks, no transport: loopback addresses, the exposure rule, PEM files."""

from __future__ import annotations

import ipaddress
from pathlib import Path

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


class SecurityConfigError(ValueError):
    """A security setting that must stop the server from starting (the message says the fix)."""


def is_loopback(host: str) -> bool:
    """True when `host` only accepts connections from this machine (127.0.0.0/8, ::1, localhost).

    Any other name counts as exposed: a name may resolve to anything, and a wildcard address
    (0.0.0.0, ::) listens on every interface.
    """
    name = host.strip().strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, *, authenticated: bool, allow_unauthenticated: bool) -> None:
    """Refuse a listener reachable from other machines that nobody has to authenticate to.

    Raises SecurityConfigError naming the ways out, unless the address is loopback, bearer tokens
    or client certificates are required, or the operator opted in explicitly.
    """
    if authenticated or allow_unauthenticated or is_loopback(host):
        return
    raise SecurityConfigError(
        f"refusing to serve on non-loopback address {host!r} without authentication: set "
        "--auth-tokens-file (RNNSERVE_AUTH_TOKENS_FILE) for bearer tokens or "
        "--tls-client-ca-file (RNNSERVE_TLS_CLIENT_CA_FILE) for client certificates, bind a "
        "loopback address (--host 127.0.0.1), or accept an open listener explicitly with "
        "--allow-unauthenticated (RNNSERVE_ALLOW_UNAUTHENTICATED=true)"
    )


def read_pem(path: Path, setting: str, marker: str) -> bytes:
    """The bytes of a PEM file named by `setting`; a missing, unreadable or non-PEM file raises
    SecurityConfigError naming the setting and the path (never the content: it may be a key)."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise SecurityConfigError(f"{setting}: cannot read {path}: {err.strerror}") from None
    if b"-----BEGIN " not in data or marker.encode() not in data:
        raise SecurityConfigError(f"{setting}: {path} holds no PEM {marker.strip('-').lower()}")
    return data
