"""The benchmark's model: the shipped char-lstm if present, else a random-weight twin (2x256 LSTM).

Run as a script (`python bench/model.py OUT_DIR`) it writes a model repository holding a
`char-lstm` of the shape the peers are measured with and the shipped model had until issue 13
(vocabulary 100, embedding 64, 2 layers of 256; the shipped one is 2 x 448 now) and random
weights: speed does not depend on the weights. Torch is imported only here, in a child
process, so the benchmark process itself stays lean.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "models" / "repository"
NAME = "char-lstm"
VOCAB = 100
EMBEDDING = 64
HIDDEN = 256
LAYERS = 2


def bench_repository(work: Path, *, random_model: bool = False) -> tuple[Path, str]:
    """A repository holding `char-lstm` and where it came from ("shipped" or "random weights")."""
    if not random_model and (SHIPPED / NAME / "model.json").is_file():
        return SHIPPED, "shipped"
    out = work / "repository"
    if not (out / NAME / "model.json").is_file():
        subprocess.run([sys.executable, __file__, str(out)], check=True)
    return out, "random weights"


def export_random_model(out: Path) -> None:
    """Write `out/char-lstm/{model.json,1/model.onnx}` with random weights."""
    import torch
    from rnnserve.server.manifest import (
        Architecture,
        ExportInfo,
        ModelManifest,
        OutputSpec,
        StateSpec,
        TokenInput,
        VersionInfo,
        dump_manifest,
    )

    class CharLstm(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(VOCAB, EMBEDDING)
            self.lstm = torch.nn.LSTM(EMBEDDING, HIDDEN, LAYERS, batch_first=True)
            self.head = torch.nn.Linear(HIDDEN, VOCAB)

        def forward(
            self, tokens: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            hidden, (hn, cn) = self.lstm(self.embed(tokens), (h0, c0))
            return self.head(hidden), hn, cn

    torch.manual_seed(0)
    model = CharLstm().eval()
    folder = out / NAME / "1"
    folder.mkdir(parents=True, exist_ok=True)
    onnx_path = folder / "model.onnx"
    example = (
        torch.zeros(2, 3, dtype=torch.int64),
        torch.zeros(LAYERS, 2, HIDDEN),
        torch.zeros(LAYERS, 2, HIDDEN),
    )
    opset = 17
    torch.onnx.export(
        model,
        example,
        str(onnx_path),
        input_names=["tokens", "h0", "c0"],
        output_names=["logits", "hn", "cn"],
        dynamic_axes={
            "tokens": {0: "batch", 1: "time"},
            "h0": {1: "batch"},
            "c0": {1: "batch"},
            "logits": {0: "batch", 1: "time"},
            "hn": {1: "batch"},
            "cn": {1: "batch"},
        },
        opset_version=opset,
        dynamo=False,
    )
    vocabulary = [chr(code) for code in range(32, 127)] + ["\n", "\t", "\r", "\x0b", "\x0c"]
    manifest = ModelManifest(
        name=NAME,
        description="Benchmark twin of the shipped char-lstm: same shape, random weights.",
        task="language-model",
        cell="lstm",
        streamable=True,
        architecture=Architecture(layers=LAYERS, hidden_size=HIDDEN, embedding_size=EMBEDDING),
        input=TokenInput(name="tokens", vocabulary=vocabulary),
        outputs=[OutputSpec(name="logits", meaning="logits", shape=[VOCAB], labels=vocabulary)],
        states=[
            StateSpec(input_name="h0", output_name="hn", shape=[LAYERS, HIDDEN], batch_axis=1),
            StateSpec(input_name="c0", output_name="cn", shape=[LAYERS, HIDDEN], batch_axis=1),
        ],
        versions=[
            VersionInfo(
                version=1,
                sha256=hashlib.sha256(onnx_path.read_bytes()).hexdigest(),
                export=ExportInfo(
                    exporter=f"torch.onnx.export(dynamo=False) torch {torch.__version__}",
                    opset=opset,
                ),
            )
        ],
    )
    dump_manifest(manifest, out / NAME / "model.json")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Export the benchmark's random-weight char-lstm.")
    parser.add_argument("out", type=Path, help="repository folder to write")
    export_random_model(parser.parse_args().out)
