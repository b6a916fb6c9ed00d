"""ModelRepository: finds models, checks sha256 and graph names, says which model is wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tiny_models as tm
from rnnserve.server.manifest import MANIFEST_FILENAME
from rnnserve.server.repository import ModelRepository, RepositoryError


def _one_model(root: Path) -> Path:
    tm.build_language_model(root, "lm", "gru", hidden=4)
    return root / "lm"


def test_loads_every_version(tiny_repository: Path) -> None:
    models = ModelRepository(tiny_repository).load()
    assert sorted(models) == sorted(tm.ALL_MODELS)
    assert sorted(models[tm.LSTM_LM]) == [1, 2]
    lstm = models[tm.LSTM_LM][2]
    assert lstm.state_bytes == 2 * (2 * 12 * 4)
    assert ModelRepository(tiny_repository, [tm.RNN_LM]).scan().keys() == {tm.RNN_LM}


def test_sha256_mismatch_names_the_model(tmp_path: Path) -> None:
    folder = _one_model(tmp_path)
    onnx_path = folder / "1" / "model.onnx"
    onnx_path.write_bytes(onnx_path.read_bytes() + b"\0")
    with pytest.raises(RepositoryError, match=r"model 'lm' version 1: sha256 of model.onnx is"):
        ModelRepository(tmp_path).scan()


def test_graph_names_must_match_the_manifest(tmp_path: Path) -> None:
    folder = _one_model(tmp_path)
    manifest = json.loads((folder / MANIFEST_FILENAME).read_text())
    manifest["states"][0]["input_name"] = "hidden_in"
    (folder / MANIFEST_FILENAME).write_text(json.dumps(manifest))
    with pytest.raises(
        RepositoryError, match=r"model 'lm' version 1: graph inputs .* do not match"
    ):
        ModelRepository(tmp_path).load()


def test_missing_files_and_bad_manifests(tmp_path: Path) -> None:
    folder = _one_model(tmp_path)
    (folder / "1" / "model.onnx").unlink()
    with pytest.raises(RepositoryError, match=r"version 1: .* is missing"):
        ModelRepository(tmp_path).scan()
    (folder / MANIFEST_FILENAME).write_text("{not json")
    with pytest.raises(RepositoryError, match=r"model 'lm': invalid model\.json"):
        ModelRepository(tmp_path).scan()
    with pytest.raises(RepositoryError, match="not a directory"):
        ModelRepository(tmp_path / "absent").scan()
    with pytest.raises(RepositoryError, match=r"\['other'\] requested but not found"):
        ModelRepository(tmp_path, ["other"]).scan()


def test_folder_must_match_manifest_name(tmp_path: Path) -> None:
    folder = _one_model(tmp_path)
    folder.rename(tmp_path / "renamed")
    with pytest.raises(RepositoryError, match="folder must match"):
        ModelRepository(tmp_path).scan()
