"""Regenerate (or, with --check, verify) the Python code generated from protos/rnnserve/*."""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
# rnnserve.v1 (the native API) and rnnserve.kserve.v2 (the Open Inference Protocol front door)
PACKAGES = ("rnnserve/v1", "rnnserve/kserve/v2")


def generate(out: Path) -> list[Path]:
    """Run protoc with -I protos so generated imports read `from rnnserve.v1 import ...`."""
    import grpc_tools

    include = Path(grpc_tools.__file__).parent / "_proto"
    protos = sorted(p for package in PACKAGES for p in (PROTO_ROOT / package).glob("*.proto"))
    plugins = Path(sys.executable).parent  # protoc-gen-mypy lives beside this interpreter
    args = [
        "protoc",
        f"--plugin=protoc-gen-mypy={plugins / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={plugins / 'protoc-gen-mypy_grpc'}",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *(str(p.relative_to(PROTO_ROOT)) for p in protos),
    ]
    if protoc.main(args) != 0:
        sys.exit("protoc failed")
    return sorted(
        p for package in PACKAGES for p in (out / package).iterdir() if p.suffix in {".py", ".pyi"}
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if committed code drifted")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        generated = generate(Path(tmp))
        drifted = []
        for path in generated:
            target = PROTO_ROOT / path.relative_to(tmp)
            if args.check:
                if not target.exists() or not filecmp.cmp(path, target, shallow=False):
                    drifted.append(target.relative_to(ROOT))
            else:
                target.write_bytes(path.read_bytes())
                print(f"wrote {target.relative_to(ROOT)}")
        if drifted:
            sys.exit(f"generated code drifted from the .proto; run `make proto`: {drifted}")


if __name__ == "__main__":
    main()
