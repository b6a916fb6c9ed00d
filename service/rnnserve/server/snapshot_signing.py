"""The snapshot signing secret: where it comes from, and when a server may not run without one.

The rule (an exposed server is one whose `host` is not a loopback address):
- `snapshot_secret_file` wins over `snapshot_secret`; the file is read once at start and
  stripped of surrounding whitespace; a missing, unreadable, empty or oversized file, or an empty
  `snapshot_secret`, stops the start.
- An exposed server with a `snapshot_dir` must have a secret: it refuses to start without one
  (its saved sessions would otherwise be unsigned files it must not trust).
- An exposed server without a secret still serves, but refuses snapshot imports
  (SnapshotSecretRequired): an unsigned snapshot can be forged or replayed by anyone.
- A loopback server may run without a secret: snapshots are then only checksummed.
"""

from __future__ import annotations

from rnnserve.server.security import SecurityConfigError, is_loopback
from rnnserve.server.settings import Settings

# A secret is a few dozen bytes; the bound keeps a mistaken path (a log, /dev/zero) from being
# read whole.
MAX_SECRET_BYTES = 4096


def signing_secret(settings: Settings) -> bytes | None:
    """The secret snapshots are signed and verified with, or None when none is configured.

    Raises SecurityConfigError (naming the setting, never the secret) for a secret that is
    configured but unusable.
    """
    path = settings.snapshot_secret_file
    if path is not None:
        try:
            with path.open("rb") as handle:
                raw = handle.read(MAX_SECRET_BYTES + 1)
        except OSError as err:
            raise SecurityConfigError(
                f"snapshot_secret_file: cannot read {path}: {err.strerror or err}"
            ) from None
        if len(raw) > MAX_SECRET_BYTES:
            raise SecurityConfigError(
                f"snapshot_secret_file: {path} holds more than {MAX_SECRET_BYTES} bytes; "
                "is it the right file?"
            )
        secret = raw.strip()
        if not secret:
            raise SecurityConfigError(
                f"snapshot_secret_file: {path} is empty; put a random secret in it (for example "
                "`openssl rand -hex 32`)"
            )
        return secret
    if settings.snapshot_secret is not None:
        # Used as given (not stripped), so signatures made before this rule still verify.
        secret = settings.snapshot_secret.get_secret_value().encode()
        if not secret.strip():
            raise SecurityConfigError("snapshot_secret is empty; set a random secret or unset it")
        return secret
    return None


def is_exposed(settings: Settings) -> bool:
    """True when the server listens on an address other machines can reach."""
    return not is_loopback(settings.host)


def check_secret_policy(settings: Settings, secret: bytes | None) -> None:
    """Refuse to start an exposed server that keeps snapshots but has no secret to sign them."""
    if secret is None and settings.snapshot_dir is not None and is_exposed(settings):
        raise SecurityConfigError(
            f"refusing to keep unsigned session snapshots in {settings.snapshot_dir} on "
            f"non-loopback address {settings.host!r}: set --snapshot-secret-file "
            "(RNNSERVE_SNAPSHOT_SECRET_FILE) to a file holding a random secret, bind a loopback "
            "address, or unset --snapshot-dir"
        )
