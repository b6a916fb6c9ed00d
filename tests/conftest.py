"""Shared pytest fixtures: a temporary repository of tiny ONNX models (see tests/tiny_models.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# tiny_models.py is a shared helper module, importable from every test folder.
sys.path.insert(0, str(Path(__file__).parent))

from rnnserve.server.manifest import ModelManifest
from tiny_models import build_repository


@pytest.fixture(scope="session")
def tiny_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository holding every tiny model (built once per test run; do not modify it)."""
    root = tmp_path_factory.mktemp("tiny_repository")
    build_repository(root)
    return root


@pytest.fixture(scope="session")
def tiny_manifests(tiny_repository: Path) -> dict[str, ModelManifest]:
    """The tiny models' manifests by name."""
    from rnnserve.server.manifest import load_manifest

    return {p.parent.name: load_manifest(p) for p in tiny_repository.glob("*/model.json")}
