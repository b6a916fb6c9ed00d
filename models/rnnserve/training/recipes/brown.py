"""Part-of-speech tagger (bidirectional LSTM) on the Brown corpus, and its baseline."""

from __future__ import annotations

from collections import Counter, defaultdict

from rnnserve.training.config import RunConfig
from rnnserve.training.datasets import brown
from rnnserve.training.datasets.words import (
    CASED_TOKEN_PATTERN,
    TOKEN_PATTERN,
    build_vocabulary,
    encode_words,
)
from rnnserve.training.model import NetworkSpec
from rnnserve.training.recipe import Recipe
from rnnserve.training.tasks.sequences import TaggerTask
from torch import nn


def most_frequent_tag_baseline(sentences: dict[str, list[brown.Sentence]]) -> dict[str, float]:
    """Each word gets its most frequent training tag; unseen words the most frequent tag overall."""
    per_word: dict[str, Counter[str]] = defaultdict(Counter)
    overall: Counter[str] = Counter()
    for sentence in sentences["train"]:
        for word, tag in sentence:
            per_word[word][tag] += 1
            overall[tag] += 1
    fallback = overall.most_common(1)[0][0]
    best = {word: counts.most_common(1)[0][0] for word, counts in per_word.items()}
    metrics = {}
    for split in ("validation", "test"):
        tokens = [(w, t) for s in sentences[split] for w, t in s]
        correct = sum(best.get(w, fallback) == t for w, t in tokens)
        metrics[
            f"baseline_most_frequent_tag_{'val' if split == 'validation' else split}_accuracy"
        ] = correct / len(tokens)
    return metrics


def build(config: RunConfig) -> Recipe:
    """Word ids (words seen once -> <unk>) in, one tag per word out; case kept unless configured."""
    lowercase = bool(config.dataset_options.get("lowercase", False))
    sentences = brown.load_splits(lowercase=lowercase)
    vocabulary = build_vocabulary(
        ([w for w, _ in s] for s in sentences["train"]),
        min_count=config.dataset_options.get("min_count", 2),
    )
    tag_counts = Counter(t for s in sentences["train"] for _, t in s)
    tags = sorted(tag_counts, key=lambda t: (-tag_counts[t], t))
    tag_index = {t: i for i, t in enumerate(tags)}
    word_index = {w: i for i, w in enumerate(vocabulary)}
    fallback = tag_index[tags[0]]
    splits = {
        name: (
            [encode_words([w for w, _ in s], word_index) for s in items],
            [[tag_index.get(t, fallback) for _, t in s] for s in items],
        )
        for name, items in sentences.items()
    }
    spec = NetworkSpec.from_config(
        config.network, vocab_size=len(vocabulary), output_size=len(tags), bidirectional=True
    )
    task = TaggerTask(
        splits,
        config.training.batch_size,
        word_dropout=float(config.dataset_options.get("word_dropout", 0.0)),
    )

    def finish(model: nn.Module) -> tuple[dict[str, float], dict[str, str]]:
        metrics = {"test_token_accuracy": task.evaluate(model, "test")["token_accuracy"]}
        metrics.update(most_frequent_tag_baseline(sentences))
        notes = {
            "whole_sequence": "bidirectional: send a whole sentence in one call, not streamable",
            "tags": "Brown tags with the -tl/-hl/-nc suffixes removed",
        }
        return metrics, notes

    return Recipe(
        spec=spec,
        task=task,
        input_kind="tokens",
        vocabulary=vocabulary,
        unknown_token=0,
        token_pattern=TOKEN_PATTERN if lowercase else CASED_TOKEN_PATTERN,
        lowercase=lowercase,
        output_meaning="logits",
        output_labels=tags,
        data={
            "name": "Brown corpus (tagged)",
            "source": brown.SOURCE,
            "licence": brown.LICENCE,
            "sha256": "410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2",
            "splits": {k: len(v) for k, v in sentences.items()},
        },
        finish=finish,
    )
