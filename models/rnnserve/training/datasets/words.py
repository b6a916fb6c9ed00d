"""Word tokenisation and vocabularies for the word-level models (sentiment, tagging)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from rnnserve.server.tokenizer import LOWER_WORDS

# Text -> tokens for word models: the server's own tokenizer object, named in the manifest
# (`input.tokenizer`), so training, export and serving split text the same way.
TOKEN_PATTERN = LOWER_WORDS.pattern
# a cased variant, the legacy `token_pattern` hint of the Brown tagger's manifest (its server-side
# tokenizer is brown-v1)
CASED_TOKEN_PATTERN = r"[A-Za-z0-9]+(?:['\-][A-Za-z0-9]+)*|[^\sA-Za-z0-9]"
UNKNOWN = "<unk>"


def tokenize(text: str) -> list[str]:
    """lower-words-v1: lowercase, then words (with inner ' or -) and single punctuation marks."""
    return LOWER_WORDS.words(text)


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
