"""Word tokenisation and vocabularies for the word-level models (sentiment, tagging)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

# Text -> tokens for word models; recorded in the manifest so any client can encode the same way.
TOKEN_PATTERN = r"[a-z0-9]+(?:['\-][a-z0-9]+)*|[^\sa-z0-9]"
# the same for models that keep case (capitals tell proper nouns apart)
CASED_TOKEN_PATTERN = r"[A-Za-z0-9]+(?:['\-][A-Za-z0-9]+)*|[^\sA-Za-z0-9]"
UNKNOWN = "<unk>"
_TOKEN_RE = re.compile(TOKEN_PATTERN)


def tokenize(text: str) -> list[str]:
    """Lowercase, then words (with inner ' or -) and single punctuation marks."""
    return _TOKEN_RE.findall(text.lower())


def build_vocabulary(sentences: Iterable[list[str]], min_count: int = 2) -> list[str]:
    """`<unk>` first (id 0), then words seen at least `min_count` times, most frequent first.

    Words seen once become `<unk>` in training, so the model learns what to do with unseen words.
    """
    counts = Counter(word for sentence in sentences for word in sentence)
    words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
    return [UNKNOWN, *words]


def encode_words(words: list[str], index: dict[str, int]) -> list[int]:
    """Words -> ids, unknown words -> 0."""
    return [index.get(word, 0) for word in words]
