"""ModelRepository: finds, validates and loads <name>/model.json + <version>/model.onnx."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pydantic
from rnnserve.server.manifest import (
    MANIFEST_FILENAME,
    ONNX_FILENAME,
    ModelManifest,
    file_sha256,
    load_manifest,
)
from rnnserve.server.runtime import OnnxModel

log = logging.getLogger(__name__)


class RepositoryError(Exception):
    """A model in the repository is missing, malformed, or does not match its manifest."""


@dataclass(frozen=True)
class ModelFiles:
    """A validated manifest and the path of each version's onnx file."""

    manifest: ModelManifest
    paths: dict[int, Path]


class ModelRepository:
    """A folder of models; `scan` validates manifests and files, `load` builds the OnnxModels."""

    def __init__(self, root: Path, only: list[str] | None = None) -> None:
        self.root = root
        self.only = only

    def scan(self) -> dict[str, ModelFiles]:
        """Find and validate every model (or the `only` ones); raises RepositoryError naming it."""
        if not self.root.is_dir():
            raise RepositoryError(f"model repository {str(self.root)!r} is not a directory")
        found: dict[str, ModelFiles] = {}
        for manifest_path in sorted(self.root.glob(f"*/{MANIFEST_FILENAME}")):
            folder = manifest_path.parent.name
            if self.only is not None and folder not in self.only:
                continue
            found[folder] = self._check(manifest_path)
        if self.only is not None:
            missing = sorted(set(self.only) - set(found))
            if missing:
                raise RepositoryError(
                    f"models {missing} requested but not found in {str(self.root)!r}"
                )
        if not found:
            raise RepositoryError(f"no models (*/{MANIFEST_FILENAME}) in {str(self.root)!r}")
        return found

    def _check(self, manifest_path: Path) -> ModelFiles:
        folder = manifest_path.parent.name
        try:
            manifest = load_manifest(manifest_path)
        except pydantic.ValidationError as err:
            raise RepositoryError(f"model {folder!r}: invalid {MANIFEST_FILENAME}: {err}") from err
        except (OSError, ValueError) as err:
            raise RepositoryError(
                f"model {folder!r}: cannot read {MANIFEST_FILENAME}: {err}"
            ) from err
        if manifest.name != folder:
            raise RepositoryError(
                f"model {folder!r}: manifest names it {manifest.name!r}; the folder must match"
            )
        paths: dict[int, Path] = {}
        for info in manifest.versions:
            path = manifest_path.parent / str(info.version) / ONNX_FILENAME
            if not path.is_file():
                raise RepositoryError(f"model {folder!r} version {info.version}: {path} is missing")
            actual = file_sha256(path)
            if actual != info.sha256:
                raise RepositoryError(
                    f"model {folder!r} version {info.version}: sha256 of {path.name} is {actual}, "
                    f"the manifest says {info.sha256}"
                )
            paths[info.version] = path
        return ModelFiles(manifest, paths)

    def load(self, *, intra_op_threads: int = 1) -> dict[str, dict[int, OnnxModel]]:
        """Scan, then build an OnnxModel per version and check its graph against the manifest."""
        models: dict[str, dict[int, OnnxModel]] = {}
        for name, files in self.scan().items():
            models[name] = {}
            for version, path in files.paths.items():
                try:
                    model = OnnxModel(
                        files.manifest, version, path, intra_op_threads=intra_op_threads
                    )
                except Exception as err:  # onnxruntime raises its own exception types
                    raise RepositoryError(
                        f"model {name!r} version {version}: onnxruntime cannot load it: {err}"
                    ) from err
                check_graph_names(model)
                models[name][version] = model
                log.info("loaded model %s version %d", name, version)
        return models


def check_graph_names(model: OnnxModel) -> None:
    """The graph's inputs and outputs must be exactly the tensors the manifest names."""
    manifest = model.manifest
    want_in = {manifest.input.name} | {s.input_name for s in manifest.states}
    want_out = {o.name for o in manifest.outputs} | {s.output_name for s in manifest.states}
    have_in, have_out = set(model.graph_input_names()), set(model.graph_output_names())
    where = f"model {manifest.name!r} version {model.version}"
    if have_in != want_in:
        raise RepositoryError(
            f"{where}: graph inputs {sorted(have_in)} do not match the manifest's {sorted(want_in)}"
        )
    if not want_out <= have_out:
        raise RepositoryError(
            f"{where}: graph outputs {sorted(have_out)} lack the manifest's "
            f"{sorted(want_out - have_out)}"
        )
