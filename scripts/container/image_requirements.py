"""Print the requirements of `rnnserve[<extras>]` from pyproject.toml, one per line."""

# Why: the Dockerfile installs the dependencies in a layer of their own, keyed on pyproject.toml
# only, so a change to the source rebuilds seconds of work instead of re-downloading onnxruntime.
# Standard library only: it runs on the bare base image before anything is installed.

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path


def requirements(pyproject: Path, extras: list[str]) -> list[str]:
    """The base dependencies plus those of `extras`, following `rnnserve[...]` self-references."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    name = project["name"]
    optional: dict[str, list[str]] = project.get("optional-dependencies", {})
    self_ref = re.compile(rf"^{re.escape(name)}\[(?P<extras>[^\]]+)\]\s*$")
    result: list[str] = list(project.get("dependencies", []))
    seen: set[str] = set()
    pending = list(extras)
    while pending:
        extra = pending.pop(0)
        if extra in seen:
            continue
        if extra not in optional:
            raise SystemExit(f"pyproject.toml has no extra {extra!r}")
        seen.add(extra)
        for requirement in optional[extra]:
            match = self_ref.match(requirement)
            if match:
                pending.extend(part.strip() for part in match["extras"].split(","))
            elif requirement not in result:
                result.append(requirement)
    return result


def build_requirements(pyproject: Path) -> list[str]:
    """What building the wheel needs ([build-system] requires)."""
    build_system = tomllib.loads(pyproject.read_text(encoding="utf-8"))["build-system"]
    return list(build_system["requires"])


def main() -> None:
    """CLI: image_requirements.py [--pyproject PATH] (--build-system | EXTRA...)"""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pyproject", type=Path, default=Path("pyproject.toml"))
    parser.add_argument(
        "--build-system", action="store_true", help="print the wheel's build requirements instead"
    )
    parser.add_argument("extras", nargs="*")
    args = parser.parse_args()
    if args.build_system:
        lines = build_requirements(args.pyproject)
    else:
        lines = requirements(args.pyproject, args.extras)
    sys.stdout.write("".join(f"{line}\n" for line in lines))


if __name__ == "__main__":
    main()
