"""VADER's movie-review snippets (vaderSentiment 3.3.2 sdist): sentence -> positive / negative."""

from __future__ import annotations

import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rnnserve.training.datasets.words import tokenize
from rnnserve.training.fetch import ARCHIVES, archive_folder

SOURCE = (
    "PyPI vaderSentiment==3.3.2 sdist, additional_resources/hutto_ICWSM_2014.tar.gz -> "
    "movieReviewSnippets_GroundTruth.txt"
)
LICENCE = ARCHIVES["vader"].licence
LABELS = ["negative", "positive"]


@dataclass(frozen=True)
class Example:
    tokens: list[str]  # the text split by the model's tokenizer (lower-words-v1)
    label: int  # index into LABELS
    text: str = ""  # the snippet as written, what a client sends the server


EXTRA_SETS = ("tweets", "amazonReviewSnippets", "nytEditorialSnippets")


def load_examples(
    folder: Path | None = None, collection: str = "movieReviewSnippets"
) -> list[Example]:
    """Every snippet of a collection with a non-zero mean rating; rating > 0 is positive."""
    root = folder or archive_folder("vader")
    archive = next(root.glob("vaderSentiment-*/additional_resources/hutto_ICWSM_2014.tar.gz"))
    with tarfile.open(archive) as outer:
        member = outer.extractfile(f"hutto_ICWSM_2014/{collection}_GroundTruth.txt")
        assert member is not None
        text = member.read().decode("utf-8", errors="replace")
    examples = []
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) < 3:
            continue
        rating = float(parts[1])
        if rating == 0:
            continue  # 37 neutral snippets carry no polarity
        examples.append(Example(tokenize(parts[2]), int(rating > 0), parts[2]))
    return examples


def split_examples(
    examples: list[Example], seed: int = 13, validation: float = 0.1, test: float = 0.1
) -> dict[str, list[Example]]:
    """A seeded shuffle cut into train / validation / test (fixed for a given seed)."""
    order = np.random.default_rng(seed).permutation(len(examples))
    n_test, n_val = int(len(examples) * test), int(len(examples) * validation)
    pick = [examples[i] for i in order]
    return {
        "test": pick[:n_test],
        "validation": pick[n_test : n_test + n_val],
        "train": pick[n_test + n_val :],
    }
