"""The files of snapshot_dir: sessions saved at shutdown, and those a start could not restore.

    sessions.rnnsnap                          the live sessions, written at graceful shutdown
    unrestored-<UTC time>-<random>.rnnsnap    saved sessions a start could not restore (wrong
                                              secret, a model not served, ...), kept for a later
                                              start: every start retries them
    unreadable-<UTC time>-<random>.rnnsnap    a file no configuration can read (damaged), moved
                                              out of the way for a person to look at

Nothing here deletes a session that has not been restored: a file is removed only after every
session in it is live again or written, durably, into a new kept-aside file. Every write is a
temporary file, fsync, rename, then an fsync of the directory, so a crash leaves either the old
file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Iterable
from pathlib import Path

from rnnserve.server import snapshot

SAVED = snapshot.FILE_NAME
KEPT_PREFIX = "unrestored-"
UNREADABLE_PREFIX = "unreadable-"
SUFFIX = ".rnnsnap"


def probe_writable(directory: Path) -> None:
    """Fail now, not at shutdown, if sessions could not be saved in `directory`.

    Creates the directory if its parent exists (a missing parent is more likely a typo than a
    wish), then creates, fsyncs, renames and removes a file there: the operations a save uses.
    Raises OSError with a message naming the setting, the path and the cause.
    """
    probe = directory / f".write-probe-{os.getpid()}-{secrets.token_hex(4)}"
    renamed = probe.with_name(probe.name + ".renamed")
    try:
        directory.mkdir(exist_ok=True)
        if not directory.is_dir():
            raise NotADirectoryError(f"{directory} is not a directory")
        with probe.open("xb") as handle:
            handle.write(b"rnnserve write probe\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(probe, renamed)
        renamed.unlink()
        _fsync_directory(directory)
    except OSError as err:
        for leftover in (probe, renamed):
            with contextlib.suppress(OSError):
                leftover.unlink(missing_ok=True)
        cause = err.strerror or str(err)
        raise OSError(
            f"snapshot_dir {directory}: sessions could not be saved there ({cause}); create it "
            "(its parent must exist) and make it writable by the server's user, or choose "
            "another --snapshot-dir (RNNSERVE_SNAPSHOT_DIR)"
        ) from None


def sources(directory: Path) -> list[Path]:
    """The files a start restores from: the saved sessions first, then kept-aside files, oldest
    first (names sort by time)."""
    found = sorted(directory.glob(f"{KEPT_PREFIX}*{SUFFIX}"))
    saved = directory / SAVED
    return [saved, *found] if saved.is_file() else found


def save(directory: Path, blobs: Iterable[bytes]) -> tuple[int, Path]:
    """Write the live sessions' snapshots as the saved-sessions file; (count, path)."""
    path = directory / SAVED
    count = snapshot.write_file(path, blobs)
    _fsync_directory(directory)
    return count, path


def keep_aside(directory: Path, blobs: list[bytes]) -> Path:
    """Write snapshots a start could not restore to a new kept-aside file (never an existing
    one: the name is unique), durably; its path."""
    path = directory / _unique_name(KEPT_PREFIX)
    snapshot.write_file(path, blobs)
    _fsync_directory(directory)
    return path


def set_aside_unreadable(path: Path) -> Path:
    """Move a file that cannot be read out of the way, under a unique name; its new path."""
    target = path.with_name(_unique_name(UNREADABLE_PREFIX))
    os.replace(path, target)
    _fsync_directory(path.parent)
    return target


def remove(paths: list[Path]) -> None:
    """Remove files whose every session is live again or kept aside in a newer file."""
    for path in paths:
        path.unlink(missing_ok=True)
    if paths:
        _fsync_directory(paths[0].parent)


def _unique_name(prefix: str) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return f"{prefix}{stamp}-{secrets.token_hex(4)}{SUFFIX}"


def _fsync_directory(directory: Path) -> None:
    """Make a rename or removal in `directory` durable (a no-op where directories cannot be
    opened, as on Windows)."""
    try:
        handle = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    finally:
        os.close(handle)
