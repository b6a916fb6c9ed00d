"""Part-of-speech tagger (bidirectional LSTM) on the Brown corpus, and its baseline."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

from rnnserve.server.inputs import TextCodec
from rnnserve.server.manifest import ModelManifest, TokenInput
from rnnserve.server.tokenizer import BROWN
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
from rnnserve.training.served import UNSEEN, ServedModel, tagger_accuracy
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
    # a validation or test tag never seen in training has no output: it scores as an error
    # (UNSEEN never equals a prediction), not as the most frequent tag
    splits = {
        name: (
            [encode_words([w for w, _ in s], word_index) for s in items],
            [[tag_index.get(t, UNSEEN) for _, t in s] for s in items],
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
            "tags": "Brown tags with the -tl/-hl/-nc suffixes removed; a held-out tag never seen "
            "in training counts as an error (test_unseen_tag_tokens says how many)",
        }
        return metrics, notes

    return Recipe(
        spec=spec,
        task=task,
        input_kind="tokens",
        vocabulary=vocabulary,
        unknown_token=0,
        tokenizer=None if lowercase else BROWN.name,
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
        evaluate_served=(
            None
            if lowercase
            else lambda folder, manifest: served_metrics(folder, manifest, sentences)
        ),
    )


def served_metrics(
    folder: Path, manifest: ModelManifest, sentences: dict[str, list[brown.Sentence]]
) -> dict[str, float]:
    """The exported tagger as the server runs it, on validation and test.

    Pre-tokenised (token ids sent) and raw text (each test sentence detokenized to ordinary text,
    brown.detokenize, and sent as text: the manifest's tokenizer splits it), with the share of
    test tokens the text path cannot produce; and, for comparison, the same raw text split by
    the legacy `token_pattern` regex the server used before `tokenizer`.
    """
    served = ServedModel.load(folder, manifest)
    test = sentences["test"]
    texts = [brown.detokenize([w for w, _ in s]) for s in test]
    metrics: dict[str, float] = {}
    for split, prefix in (("validation", "val"), ("test", "test")):
        result = tagger_accuracy(served, sentences[split])
        metrics[f"{prefix}_token_accuracy"] = result["token_accuracy"]
        metrics[f"{prefix}_unseen_tag_tokens"] = result["unseen_tag_tokens"]
    text = tagger_accuracy(served, test, texts)
    metrics["test_text_token_accuracy"] = text["token_accuracy"]
    metrics["test_text_unproducible_token_share"] = text["unproducible_token_share"]
    metrics["test_text_sentences_reproduced"] = text["sentences_reproduced"]
    metrics.update(most_frequent_tag_baseline(sentences))  # cheap, so recomputed beside them
    spec = served.manifest.input
    assert isinstance(spec, TokenInput)
    legacy = TextCodec(spec.model_copy(update={"tokenizer": None}), "legacy")
    if legacy.tokenizer is not None:
        old = tagger_accuracy(served, test, texts, codec=legacy)
        metrics["test_text_token_accuracy_token_pattern"] = old["token_accuracy"]
        metrics["test_text_unproducible_token_share_token_pattern"] = old[
            "unproducible_token_share"
        ]
    return metrics
