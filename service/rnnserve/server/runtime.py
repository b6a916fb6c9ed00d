"""OnnxModel: one model version's onnxruntime session, fed and read by the names in its manifest."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from rnnserve.server.domain import FloatArray
from rnnserve.server.manifest import ModelManifest


def session_options(intra_op_threads: int) -> ort.SessionOptions:
    """The onnxruntime options every model runs with, chosen by measurement.

    Measured on the 2-core dev machine (shared, so best of 7 runs), 2-layer H=256 LSTM, one token
    per sequence, us per call (us per token):

        threads=1 spin=off   b1 72    b16 303 (19)   b64 1142 (18)   b256 4725 (18)
        threads=2 spin=off   b1 87    b16 331 (21)   b64 1160 (18)   b256 7809 (31)
        threads=2 spin=on    b1 140   b16 704 (44)   b64 3924 (61)   b256 8565 (34)

    A second intra-op thread buys nothing for these recurrent ops and loses at large batches
    (it competes with the event loop for the second core); a spinning pool burns a core between
    batches and is slower everywhere here. So: `intra_op_threads` from settings (default 1),
    spinning off, one inter-op thread and sequential execution (the scheduler makes one call at a
    time per model). Full graph optimisation is onnxruntime's default and kept.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


class OnnxModel:
    """Runs one model version: inputs [batch, time, ...] and states -> outputs and new states.

    Thread-safe to call from one worker thread at a time (the scheduler owns that thread).
    """

    def __init__(
        self, manifest: ModelManifest, version: int, path: Path, *, intra_op_threads: int = 1
    ) -> None:
        self.manifest = manifest
        self.version = version
        self.path = path
        self.weights_sha256 = manifest.version_info(version).sha256
        self._session = ort.InferenceSession(
            str(path),
            sess_options=session_options(intra_op_threads),
            providers=["CPUExecutionProvider"],
        )
        self.input_name = manifest.input.name
        self.output_names = [o.name for o in manifest.outputs]
        self.state_input_names = [s.input_name for s in manifest.states]
        self._fetch = self.output_names + [s.output_name for s in manifest.states]
        # Bytes of recurrent state one session holds.
        self.state_bytes = manifest.state_bytes

    @property
    def key(self) -> str:
        """ "name:version", used in logs and metric labels."""
        return f"{self.manifest.name}:{self.version}"

    def graph_input_names(self) -> list[str]:
        """The graph's input tensor names (for validation against the manifest)."""
        return [i.name for i in self._session.get_inputs()]

    def graph_output_names(self) -> list[str]:
        """The graph's output tensor names (for validation against the manifest)."""
        return [o.name for o in self._session.get_outputs()]

    def run(
        self, inputs: npt.NDArray[np.generic], states: Sequence[FloatArray]
    ) -> tuple[list[FloatArray], list[FloatArray]]:
        """One onnxruntime call -> (outputs [batch, time, *shape], new states), manifest order."""
        if inputs.ndim < 2 or inputs.shape[0] == 0 or inputs.shape[1] == 0:
            # onnxruntime's recurrent kernels abort the whole process (std::terminate) on an
            # empty sequence: validation refuses one first; this keeps a slip from killing it
            raise ValueError(f"model {self.key}: no steps to run (inputs {list(inputs.shape)})")
        feeds: dict[str, npt.NDArray[np.generic]] = {self.input_name: inputs}
        for name, value in zip(self.state_input_names, states, strict=True):
            feeds[name] = value
        results = self._session.run(self._fetch, feeds)
        count = len(self.output_names)
        return (
            [np.asarray(r, dtype=np.float32) for r in results[:count]],
            [np.asarray(r, dtype=np.float32) for r in results[count:]],
        )
