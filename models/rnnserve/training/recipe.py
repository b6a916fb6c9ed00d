"""What a dataset brings to a run: network shape, task, and the manifest's input/output facts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rnnserve.server.manifest import ModelManifest
from rnnserve.training.config import RunConfig
from rnnserve.training.model import NetworkSpec, RecurrentNet, set_forget_gate_bias
from rnnserve.training.trainer import Task
from torch import nn


@dataclass
class Recipe:
    """A prepared run: everything the trainer, the exporter and the manifest writer need."""

    spec: NetworkSpec
    task: Task
    input_kind: str  # "tokens" | "features"
    vocabulary: list[str] | None = None
    unknown_token: int | None = None
    # word models: the named tokenizer (rnnserve.server.tokenizer) that made the training tokens;
    # token_pattern / lowercase are the hint older readers of the manifest understand
    tokenizer: str | None = None
    token_pattern: str | None = None
    lowercase: bool = False
    feature_names: list[str] | None = None
    output_meaning: str = "logits"  # "logits" | "value"
    output_labels: list[str] | None = None
    # feature normalisation and output de-normalisation, baked into the exported graph
    input_mean: list[float] | None = None
    input_std: list[float] | None = None
    output_mean: float | None = None
    output_std: float | None = None
    data: dict[str, Any] = field(default_factory=dict)  # DataSource fields
    # after training: held-out metrics, notes and baselines computed from the trained model
    finish: Callable[[nn.Module], tuple[dict[str, float], dict[str, str]]] | None = None
    # after export: held-out metrics of the exported model as the server runs it (its text path
    # and onnxruntime), given the model's folder in a repository and its manifest
    evaluate_served: Callable[[Path, ModelManifest], dict[str, float]] | None = None


RecipeBuilder = Callable[[RunConfig], Recipe]


def build_recipe(config: RunConfig) -> Recipe:
    """Dispatch on the config's dataset (imports lazily: each dataset pulls its own loader)."""
    if config.dataset == "shakespeare":
        from rnnserve.training.recipes.shakespeare import build
    elif config.dataset == "sentiment":
        from rnnserve.training.recipes.sentiment import build
    elif config.dataset == "births":
        from rnnserve.training.recipes.births import build
    elif config.dataset == "brown":
        from rnnserve.training.recipes.brown import build
    elif config.dataset == "generated":
        from rnnserve.training.recipes.generated import build
    else:
        raise ValueError(f"unknown dataset {config.dataset!r}")
    return build(config)


def build_network(spec: NetworkSpec, forget_bias: float | None = None) -> RecurrentNet:
    """The network for a spec (one place, so checkpoints and recipes agree).

    `forget_bias` (a config's optional `network.forget_bias`, LSTMs only) sets the forget gate's
    initial bias; None keeps PyTorch's initialisation untouched.
    """
    network = RecurrentNet(spec)
    if forget_bias is not None:
        set_forget_gate_bias(network, forget_bias)
    return network
