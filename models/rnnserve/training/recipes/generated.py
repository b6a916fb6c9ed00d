"""A generated character corpus: the whole pipeline (train, export, manifest) with no download."""

from __future__ import annotations

import numpy as np
from rnnserve.training.config import RunConfig
from rnnserve.training.model import NetworkSpec
from rnnserve.training.recipe import Recipe
from rnnserve.training.tasks.language_model import LanguageModelTask, encode
from torch import nn

WORDS = ["to", "be", "or", "not", "that", "is", "the", "question"]


def generated_text(characters: int, seed: int) -> str:
    """Seeded word salad over a small vocabulary, with line breaks: easy to learn, never empty."""
    rng = np.random.default_rng(seed)
    pieces: list[str] = []
    while sum(len(p) for p in pieces) < characters:
        line = " ".join(WORDS[int(i)] for i in rng.integers(0, len(WORDS), int(rng.integers(3, 8))))
        pieces.append(line + ".\n")
    return "".join(pieces)[:characters]


def build(config: RunConfig) -> Recipe:
    """Sizes come from dataset_options: characters (default 20000)."""
    text = generated_text(
        int(config.dataset_options.get("characters", 20000)), config.training.seed
    )
    vocabulary = sorted(set(text))
    cut_val, cut_test = int(len(text) * 0.8), int(len(text) * 0.9)
    ids = {
        "train": encode(text[:cut_val], vocabulary),
        "validation": encode(text[cut_val:cut_test], vocabulary),
        "test": encode(text[cut_test:], vocabulary),
    }
    spec = NetworkSpec.from_config(
        config.network,
        vocab_size=len(vocabulary),
        output_size=len(vocabulary),
        default_embedding_size=8,
    )
    task = LanguageModelTask(
        ids, config.training.batch_size, config.training.seq_len, eval_streams=4
    )

    def finish(model: nn.Module) -> tuple[dict[str, float], dict[str, str]]:
        return {"test_nats_per_char": task.evaluate(model, "test")["nats_per_char"]}, {}

    return Recipe(
        spec=spec,
        task=task,
        input_kind="tokens",
        vocabulary=vocabulary,
        output_meaning="logits",
        output_labels=vocabulary,
        data={
            "name": "generated word salad",
            "source": "rnnserve.training.recipes.generated",
            "licence": "generated",
        },
        finish=finish,
    )
