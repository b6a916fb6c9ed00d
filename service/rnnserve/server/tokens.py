"""Bearer tokens: the tokens file (hashes and principals, never tokens) and constant-time lookup.

The file has one token per line, `sha256:<64 hex digits> <principal>`; blank lines and lines
starting with `#` are ignored. `rnnserve token new` makes a token and its line; `rnnserve token
hash` turns an existing token into its line. A principal is 1-128 characters of letters, digits
and `. _ - @ +`; the `/` and `:` it may not contain keep it apart from a client sub-identity
(`<principal>/<x-client-id>`) and from certificate principals (`cert:<common name>`).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from rnnserve.server.security import SecurityConfigError

HASH_PREFIX = "sha256:"
PRINCIPAL_PATTERN = re.compile(r"[A-Za-z0-9._@+-]{1,128}")
_LINE = re.compile(r"sha256:([0-9a-fA-F]{64})[ \t]+(\S+)")
# 32 random bytes: as strong as the hash that stores it.
TOKEN_BYTES = 32
BEARER_SCHEME = "bearer"
# Longest accepted token: a generated one is 43 characters; anything near gRPC's metadata limit
# is not a token, and hashing it would be wasted work.
MAX_TOKEN_LENGTH = 1024


class TokenFileError(SecurityConfigError):
    """The tokens file cannot be used; the message names the file and line, never its content."""


@dataclass(frozen=True)
class TokenEntry:
    """One accepted token: the sha256 digest of its UTF-8 bytes and who presents it."""

    digest: bytes
    principal: str


def new_token() -> str:
    """A fresh random bearer token (URL-safe text)."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def digest_of(token: str) -> bytes:
    """The sha256 digest a token is stored and compared as."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def bearer_token(header: str) -> str | None:
    """The token of an `authorization` value `Bearer <token>`; None when it is not one."""
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if (
        scheme.lower() != BEARER_SCHEME
        or not token
        or len(token) > MAX_TOKEN_LENGTH
        or any(c.isspace() or not c.isprintable() for c in token)
    ):
        return None
    return token


def hash_token(token: str) -> str:
    """The `sha256:<hex>` form of a token, as the tokens file holds it."""
    return HASH_PREFIX + digest_of(token).hex()


def token_line(token: str, principal: str) -> str:
    """The tokens-file line for `token` presented by `principal` (validated)."""
    if not PRINCIPAL_PATTERN.fullmatch(principal):
        raise ValueError(
            "principal: 1-128 characters of letters, digits and . _ - @ + (no spaces, / or :)"
        )
    return f"{hash_token(token)} {principal}"


class TokenTable:
    """The accepted tokens, by digest. Lookups compare against every entry in constant time."""

    def __init__(self, entries: list[TokenEntry]) -> None:
        self._entries = tuple(entries)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def principals(self) -> frozenset[str]:
        """Every principal some token maps to."""
        return frozenset(entry.principal for entry in self._entries)

    @classmethod
    def load(cls, path: Path) -> TokenTable:
        """Read a tokens file; raises TokenFileError naming the file and the first bad line."""
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            reason = err.strerror if isinstance(err, OSError) else "not UTF-8 text"
            raise TokenFileError(f"auth_tokens_file: cannot read {path}: {reason}") from None
        return cls.parse(text, str(path))

    @classmethod
    def parse(cls, text: str, source: str = "<tokens>") -> TokenTable:
        """Parse tokens-file text; `source` names it in errors (which never quote a line)."""
        entries: list[TokenEntry] = []
        seen: dict[bytes, int] = {}
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            match = _LINE.fullmatch(line)
            if match is None:
                raise TokenFileError(
                    f"auth_tokens_file: {source} line {number}: expected "
                    "'sha256:<64 hex digits> <principal>' (store a token's hash, made by "
                    "`rnnserve token hash`, never the token itself)"
                )
            digest, principal = bytes.fromhex(match.group(1)), match.group(2)
            if not PRINCIPAL_PATTERN.fullmatch(principal):
                raise TokenFileError(
                    f"auth_tokens_file: {source} line {number}: a principal is 1-128 characters "
                    "of letters, digits and . _ - @ +"
                )
            if digest in seen:
                raise TokenFileError(
                    f"auth_tokens_file: {source} line {number}: the same token hash as line "
                    f"{seen[digest]}"
                )
            seen[digest] = number
            entries.append(TokenEntry(digest, principal))
        if not entries:
            raise TokenFileError(f"auth_tokens_file: {source} holds no token lines")
        return cls(entries)

    def principal_of(self, token: str) -> str | None:
        """The principal `token` authenticates, or None.

        The token's digest is compared with every entry by `hmac.compare_digest`, without
        stopping at a match, so the time taken says nothing about which entry (if any) matched.
        """
        digest = digest_of(token)
        found: str | None = None
        for entry in self._entries:
            if hmac.compare_digest(digest, entry.digest) and found is None:
                found = entry.principal
        return found
