"""Sentiment classifier on VADER's movie-review snippets, and a bag-of-words baseline."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from rnnserve.server.manifest import ModelManifest
from rnnserve.server.tokenizer import LOWER_WORDS
from rnnserve.training.config import RunConfig
from rnnserve.training.datasets import sentiment
from rnnserve.training.datasets.words import TOKEN_PATTERN, build_vocabulary, encode_words
from rnnserve.training.model import NetworkSpec
from rnnserve.training.recipe import Recipe
from rnnserve.training.served import ServedModel, classifier_accuracy, classifier_correct
from rnnserve.training.significance import paired_comparison
from rnnserve.training.tasks.sequences import ClassifierTask
from torch import nn
from torch.nn import functional


def bag_of_words(sequences: list[list[int]], vocab_size: int) -> torch.Tensor:
    """Binary word-presence vectors [examples, vocab] (id 0, unknown, included)."""
    out = torch.zeros(len(sequences), vocab_size)
    for i, sequence in enumerate(sequences):
        out[i, sequence] = 1.0
    return out


def logistic_regression_baseline(
    splits: dict[str, tuple[list[list[int]], list[int]]], vocab_size: int, seed: int
) -> dict[str, float]:
    """L2-regularised logistic regression on binary bag-of-words; L2 weight picked on validation."""
    return logistic_regression_fit(splits, vocab_size, seed)[0]


def logistic_regression_fit(
    splits: dict[str, tuple[list[list[int]], list[int]]], vocab_size: int, seed: int
) -> tuple[dict[str, float], list[bool]]:
    """`logistic_regression_baseline`'s metrics and the chosen model's per-example test
    correctness (in test order), for paired comparisons."""
    torch.manual_seed(seed)
    features = {k: bag_of_words(v[0], vocab_size) for k, v in splits.items()}
    labels = {k: torch.tensor(v[1]) for k, v in splits.items()}
    best: tuple[float, float, float] = (-1.0, 0.0, 0.0)
    best_correct: list[bool] = []
    for l2 in (1e-5, 1e-4, 1e-3):
        linear = nn.Linear(vocab_size, 2)
        optimizer = torch.optim.LBFGS(
            linear.parameters(), max_iter=100, line_search_fn="strong_wolfe"
        )

        def closure(
            linear: nn.Linear = linear, optimizer: torch.optim.LBFGS = optimizer, l2: float = l2
        ) -> torch.Tensor:
            optimizer.zero_grad()
            loss = functional.cross_entropy(linear(features["train"]), labels["train"])
            loss = loss + l2 * linear.weight.pow(2).sum()
            loss.backward()
            return loss

        optimizer.step(closure)
        with torch.no_grad():
            val = float(
                (linear(features["validation"]).argmax(-1) == labels["validation"]).float().mean()
            )
            correct = linear(features["test"]).argmax(-1) == labels["test"]
            test = float(correct.float().mean())
        if val > best[0]:
            best = (val, test, l2)
            best_correct = [bool(c) for c in correct]
    metrics = {
        "baseline_bow_logreg_val_accuracy": best[0],
        "baseline_bow_logreg_test_accuracy": best[1],
        "baseline_bow_logreg_l2": best[2],
    }
    return metrics, best_correct


@dataclass
class SentimentData:
    """The recipe's splits: examples, their encoded (ids, labels), and the vocabulary."""

    examples: dict[str, list[sentiment.Example]]
    splits: dict[str, tuple[list[list[int]], list[int]]]
    vocabulary: list[str]
    movie_train: int  # the first movie_train training examples are the movie-review snippets
    extra: list[str]  # the other VADER collections appended to the training split


def load_data(config: RunConfig) -> SentimentData:
    """Examples, splits and vocabulary exactly as `build` makes them."""
    examples = sentiment.split_examples(
        sentiment.load_examples(), seed=config.dataset_options.get("split_seed", 13)
    )
    # other VADER collections (tweets, product and editorial snippets) may join the training split
    # only; validation and test stay movie-review snippets, and the baseline sees the same split
    movie_train = len(examples["train"])
    extra = config.dataset_options.get("extra_training_sets", [])
    for collection in extra:
        examples["train"] = examples["train"] + sentiment.load_examples(collection=collection)
    vocabulary = build_vocabulary(
        (e.tokens for e in examples["train"]), min_count=config.dataset_options.get("min_count", 2)
    )
    index = {word: i for i, word in enumerate(vocabulary)}
    splits = {
        name: ([encode_words(e.tokens, index) or [0] for e in items], [e.label for e in items])
        for name, items in examples.items()
    }
    return SentimentData(examples, splits, vocabulary, movie_train, list(extra))


def movie_only_splits(
    data: SentimentData,
) -> dict[str, tuple[list[list[int]], list[int]]]:
    """The splits with the training split cut to its movie-review snippets."""
    train = data.splits["train"]
    return {**data.splits, "train": (train[0][: data.movie_train], train[1][: data.movie_train])}


def build(config: RunConfig) -> Recipe:
    """Word-level classifier; vocabulary from the training split (words seen >= min_count times)."""
    data = load_data(config)
    examples, splits, vocabulary = data.examples, data.splits, data.vocabulary
    extra = data.extra
    spec = NetworkSpec.from_config(
        config.network, vocab_size=len(vocabulary), output_size=len(sentiment.LABELS)
    )
    task = ClassifierTask(splits, config.training.batch_size)

    def finish(model: nn.Module) -> tuple[dict[str, float], dict[str, str]]:
        metrics = {"test_accuracy": task.evaluate(model, "test")["accuracy"]}
        metrics.update(logistic_regression_baseline(splits, len(vocabulary), config.training.seed))
        if extra:
            # the same baseline trained on the movie-review part of the training split alone
            only = logistic_regression_baseline(
                movie_only_splits(data), len(vocabulary), config.training.seed
            )
            metrics.update({k.replace("logreg", "logreg_movies_only"): v for k, v in only.items()})
        notes = {
            "streaming": "the output at step t classifies the words up to t; read the last step",
            "baseline": "binary bag-of-words logistic regression, L2 tuned on validation",
        }
        return metrics, notes

    return Recipe(
        spec=spec,
        task=task,
        input_kind="tokens",
        vocabulary=vocabulary,
        unknown_token=0,
        tokenizer=LOWER_WORDS.name,  # what tokenize() used to make the training tokens
        token_pattern=TOKEN_PATTERN,
        lowercase=True,
        output_meaning="logits",
        output_labels=sentiment.LABELS,
        data={
            "name": "VADER movie-review snippets (Hutto & Gilbert, ICWSM 2014)",
            "source": sentiment.SOURCE,
            "licence": sentiment.LICENCE,
            "sha256": "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9",
            "splits": {k: len(v[1]) for k, v in splits.items()},
        },
        finish=finish,
        evaluate_served=lambda folder, manifest: served_metrics(folder, manifest, examples["test"]),
    )


def served_metrics(
    folder: Path, manifest: ModelManifest, test: list[sentiment.Example]
) -> dict[str, float]:
    """Test accuracy of the exported model with every snippet sent as raw text to the server's
    text path, and how many snippets it splits differently from training (should be none)."""
    result = classifier_accuracy(
        ServedModel.load(folder, manifest),
        [e.text for e in test],
        [e.label for e in test],
        [e.tokens for e in test],
    )
    return {
        "test_text_accuracy": result["accuracy"],
        "test_text_tokenisation_differs": result["tokenisation_differs"],
    }


def paired_significance(config: RunConfig, repository: Path) -> dict[str, float]:
    """The shipped model against both bag-of-words baselines on the test split, paired.

    The shipped ONNX model is run as `served_metrics` runs it (raw text through the server's text
    path, so its accuracy is the manifest's test accuracy); the two baselines are refitted exactly
    as `build`'s `finish` fits them (same splits, seed and L2 grid). For each baseline: the
    discordant counts (model right and baseline wrong, and the reverse) and the exact two-sided
    McNemar p-value.
    """
    torch.set_num_threads(1)
    data = load_data(config)
    test = data.examples["test"]
    model_correct = classifier_correct(
        ServedModel.load(repository / config.name), [e.text for e in test], [e.label for e in test]
    )
    metrics: dict[str, float] = {"test_accuracy": sum(model_correct) / len(model_correct)}
    baselines = {"bow_logreg": data.splits}
    if data.extra:
        baselines["bow_logreg_movies_only"] = movie_only_splits(data)
    for name, splits in baselines.items():
        fitted, correct = logistic_regression_fit(
            splits, len(data.vocabulary), config.training.seed
        )
        pair = paired_comparison(model_correct, correct)
        metrics[f"baseline_{name}_test_accuracy"] = fitted["baseline_bow_logreg_test_accuracy"]
        metrics[f"mcnemar_vs_{name}_model_only"] = pair["first_only"]
        metrics[f"mcnemar_vs_{name}_baseline_only"] = pair["second_only"]
        metrics[f"mcnemar_vs_{name}_p_value"] = pair["p_value"]
    return metrics
