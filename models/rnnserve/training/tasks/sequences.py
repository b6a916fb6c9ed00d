"""Tasks on padded batches: a classifier (label at the last step) and a tagger (a tag per step)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from rnnserve.training.model import RecurrentNet
from torch import nn
from torch.nn import functional


def pad(sequences: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad with 0 -> (ids [batch, longest], lengths [batch])."""
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.int64)
    out = torch.zeros(len(sequences), int(lengths.max()), dtype=torch.int64)
    for i, sequence in enumerate(sequences):
        out[i, : len(sequence)] = torch.tensor(sequence, dtype=torch.int64)
    return out, lengths


class _Batches:
    """Shuffled batches over the training set, one epoch after another (resumable)."""

    def __init__(self, size: int, batch_size: int) -> None:
        self.size, self.batch_size = size, batch_size
        self.order: list[int] = []
        self.cursor = 0
        self.epoch = 0

    def next(self, rng: np.random.Generator) -> list[int]:
        if self.cursor + self.batch_size > len(self.order):
            self.order = [int(i) for i in rng.permutation(self.size)]
            self.cursor = 0
            self.epoch += 1
        picked = self.order[self.cursor : self.cursor + self.batch_size]
        self.cursor += self.batch_size
        return picked

    def state_dict(self) -> dict[str, Any]:
        return {"order": self.order, "cursor": self.cursor, "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.order, self.cursor, self.epoch = state["order"], state["cursor"], state["epoch"]


def _last_step(logits: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Logits at each sequence's last real step [batch, classes]."""
    index = (lengths - 1).view(-1, 1, 1).expand(-1, 1, logits.shape[-1])
    return logits.gather(1, index).squeeze(1)


class ClassifierTask:
    """Many-to-one: the label is predicted at the last step; earlier steps predict their prefix."""

    metric = "accuracy"
    higher_is_better = True

    def __init__(
        self, splits: dict[str, tuple[list[list[int]], list[int]]], batch_size: int
    ) -> None:
        self.splits = splits
        self.batches = _Batches(len(splits["train"][0]), batch_size)

    def state_dict(self) -> dict[str, Any]:
        return self.batches.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.batches.load_state_dict(state)

    def train_loss(self, model: nn.Module, rng: np.random.Generator) -> tuple[torch.Tensor, int]:
        sequences, labels = self.splits["train"]
        picked = self.batches.next(rng)
        ids, lengths = pad([sequences[i] for i in picked])
        # unidirectional, so right padding never reaches a real step: no packing needed
        logits, _ = model(ids)
        target = torch.tensor([labels[i] for i in picked])
        return functional.cross_entropy(_last_step(logits, lengths), target), len(picked)

    @torch.no_grad()
    def predict(self, model: nn.Module, split: str) -> torch.Tensor:
        """Predicted class per example of a split."""
        model.eval()
        sequences, _ = self.splits[split]
        predictions = []
        for start in range(0, len(sequences), 256):
            ids, lengths = pad(sequences[start : start + 256])
            logits, _ = model(ids)
            predictions.append(_last_step(logits, lengths).argmax(-1))
        return torch.cat(predictions)

    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        labels = torch.tensor(self.splits[split][1])
        accuracy = float((self.predict(model, split) == labels).float().mean())
        return {"accuracy": accuracy, "loss": 1 - accuracy}


class TaggerTask:
    """Many-to-many over whole sentences (bidirectional): a tag for every token; token accuracy."""

    metric = "token_accuracy"
    higher_is_better = True

    def __init__(
        self,
        splits: dict[str, tuple[list[list[int]], list[list[int]]]],
        batch_size: int,
        word_dropout: float = 0.0,
    ) -> None:
        self.splits = splits
        self.batches = _Batches(len(splits["train"][0]), batch_size)
        # replacing random training words by <unk> (id 0) teaches the tagger to read the context,
        # which is all it has for words it never saw
        self.word_dropout = word_dropout

    def state_dict(self) -> dict[str, Any]:
        return self.batches.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.batches.load_state_dict(state)

    def train_loss(self, model: nn.Module, rng: np.random.Generator) -> tuple[torch.Tensor, int]:
        assert isinstance(model, RecurrentNet)
        words, tags = self.splits["train"]
        picked = self.batches.next(rng)
        ids, lengths = pad([words[i] for i in picked])
        if self.word_dropout > 0:
            drop = torch.from_numpy(rng.random(tuple(ids.shape)) < self.word_dropout)
            ids = ids.masked_fill(drop, 0)
        target, _ = pad([tags[i] for i in picked])
        mask = torch.arange(ids.shape[1]).view(1, -1) < lengths.view(-1, 1)
        # packing makes the backward direction start at each sentence's real end
        logits = model.forward_padded(ids, lengths)
        loss = functional.cross_entropy(logits[mask], target[mask])
        return loss, int(mask.sum())

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        assert isinstance(model, RecurrentNet)
        model.eval()
        words, tags = self.splits[split]
        correct = total = 0
        for start in range(0, len(words), 256):
            ids, lengths = pad(words[start : start + 256])
            target, _ = pad(tags[start : start + 256])
            mask = torch.arange(ids.shape[1]).view(1, -1) < lengths.view(-1, 1)
            predicted = model.forward_padded(ids, lengths).argmax(-1)
            correct += int((predicted[mask] == target[mask]).sum())
            total += int(mask.sum())
        accuracy = correct / total
        return {"token_accuracy": accuracy, "loss": 1 - accuracy}
