"""The data fetch step: pinned sha256 checked before anything is extracted or used."""

from __future__ import annotations

import hashlib
import io
import shutil
import tarfile
from pathlib import Path

import pytest
from rnnserve.training.fetch import (
    ARCHIVES,
    COMPLETE_MARKER,
    Archive,
    ChecksumError,
    fetch,
    install_archive,
)


def _fake_archive(folder: Path) -> Path:
    """A small npm-style .tgz holding package/data/data.csv."""
    path = folder / "fake-data-1.0.0.tgz"
    payload = b"year,births\n2000,9083\n"
    with tarfile.open(path, "w:gz") as archive:
        info = tarfile.TarInfo("package/data/data.csv")
        info.size = len(payload)
        archive.addfile(info, io.BytesIO(payload))
    return path


def _spec(sha256: str) -> Archive:
    return Archive("fake", "fake-data-1.0.0.tgz", sha256, "npm", "fake-data@1.0.0", "CC0")


def test_wrong_checksum_is_refused_and_nothing_is_extracted(tmp_path: Path) -> None:
    downloaded = _fake_archive(tmp_path)
    with pytest.raises(ChecksumError) as error:
        install_archive(_spec("0" * 64), downloaded, tmp_path / "data")
    message = str(error.value)
    assert "fake-data-1.0.0.tgz" in message and "sha256 mismatch" in message
    assert "0" * 64 in message and hashlib.sha256(downloaded.read_bytes()).hexdigest() in message
    assert not (tmp_path / "data" / "fake").exists()


def test_right_checksum_extracts_and_marks_complete(tmp_path: Path) -> None:
    downloaded = _fake_archive(tmp_path)
    digest = hashlib.sha256(downloaded.read_bytes()).hexdigest()
    target = install_archive(_spec(digest), downloaded, tmp_path / "data")
    assert (target / "package" / "data" / "data.csv").read_text() == "year,births\n2000,9083\n"
    assert (target / COMPLETE_MARKER).read_text().strip() == digest


def test_fetch_downloads_once_then_reuses_the_verified_copy(tmp_path: Path) -> None:
    source = _fake_archive(tmp_path)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    calls: list[list[str]] = []

    def downloader(command: list[str]) -> None:
        calls.append(command)
        shutil.copy(source, Path(command[command.index("--pack-destination") + 1]))

    root = tmp_path / "cache"
    first = fetch(_spec(digest), root, downloader)
    second = fetch(_spec(digest), root, downloader)
    assert first == second == root / "fake"
    assert len(calls) == 1 and calls[0][:2] == ["npm", "pack"]


def test_fetch_refuses_a_tampered_download(tmp_path: Path) -> None:
    def downloader(command: list[str]) -> None:
        destination = Path(command[command.index("--pack-destination") + 1])
        (destination / "fake-data-1.0.0.tgz").write_bytes(b"not the pinned file")

    with pytest.raises(ChecksumError):
        fetch(_spec("a" * 64), tmp_path / "cache", downloader)


def test_every_pinned_archive_uses_an_ordinary_registry_client() -> None:
    for archive in ARCHIVES.values():
        command = archive.download_command(Path("/tmp/x"))
        assert len(archive.sha256) == 64
        assert command[:2] == ["npm", "pack"] or command[1:4] == ["-m", "pip", "download"]
    assert "--no-binary" in ARCHIVES["vader"].download_command(Path("/tmp/x"))
