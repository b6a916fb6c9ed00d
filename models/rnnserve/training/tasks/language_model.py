"""Character language modelling by truncated BPTT: parallel streams, state carried across chunks."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from rnnserve.training.model import RecurrentNet, State, detach_state
from torch import nn
from torch.nn import functional


def encode(text: str, vocabulary: list[str]) -> torch.Tensor:
    """Characters -> int64 ids (every character must be in the vocabulary)."""
    index = {symbol: i for i, symbol in enumerate(vocabulary)}
    return torch.tensor([index[c] for c in text], dtype=torch.int64)


def as_streams(ids: torch.Tensor, streams: int) -> torch.Tensor:
    """Cut a long id sequence into `streams` contiguous rows of equal length [streams, length]."""
    length = ids.numel() // streams
    return ids[: streams * length].view(streams, length)


class LanguageModelTask:
    """Next-character prediction; metric: nats per character on held-out text."""

    metric = "nats_per_char"
    higher_is_better = False

    def __init__(
        self,
        splits: dict[str, torch.Tensor],
        batch_size: int,
        seq_len: int,
        eval_streams: int = 32,
    ) -> None:
        self.splits = splits
        self.seq_len = seq_len
        self.train_streams = as_streams(splits["train"], batch_size)
        self.eval_streams = eval_streams
        self.position = 0
        self.epoch = 0
        self.state: State | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position, "epoch": self.epoch, "state": self.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.position, self.epoch, self.state = state["position"], state["epoch"], state["state"]

    def to(self, device: torch.device) -> None:
        """Keep the text (and the state carried between chunks) where the model runs."""
        self.splits = {name: ids.to(device) for name, ids in self.splits.items()}
        self.train_streams = self.train_streams.to(device)
        if self.state is not None:
            self.state = tuple(tensor.to(device) for tensor in self.state)

    def train_loss(self, model: nn.Module, rng: np.random.Generator) -> tuple[torch.Tensor, int]:
        """Next chunk of every stream; the state from the previous chunk is carried (detached)."""
        length = self.train_streams.shape[1]
        if self.position + self.seq_len + 1 > length:
            # new epoch: a random phase so chunk boundaries move, and a fresh state
            self.epoch += 1
            self.position = int(rng.integers(0, self.seq_len))
            self.state = None
        start, stop = self.position, self.position + self.seq_len
        inputs = self.train_streams[:, start:stop]
        targets = self.train_streams[:, start + 1 : stop + 1]
        logits, state = model(inputs, self.state)
        self.state = detach_state(state)
        self.position = stop
        loss = functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        return loss, targets.numel()

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        """Mean nats per character over the whole split, state carried through it."""
        model.eval()
        streams = as_streams(self.splits[split], self.eval_streams)
        total, count, state = 0.0, 0, None
        chunk = 256
        for start in range(0, streams.shape[1] - 1, chunk):
            stop = min(start + chunk, streams.shape[1] - 1)
            logits, state = model(streams[:, start:stop], state)
            targets = streams[:, start + 1 : stop + 1]
            total += float(
                functional.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum"
                )
            )
            count += targets.numel()
        nats = total / count
        return {"nats_per_char": nats, "bits_per_char": nats / math.log(2), "loss": nats}


@torch.no_grad()
def generate(
    model: RecurrentNet,
    vocabulary: list[str],
    prompt: str,
    length: int,
    temperature: float = 0.8,
    seed: int = 0,
) -> str:
    """Sample `length` characters after `prompt`, feeding one character at a time with state."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    ids = encode(prompt, vocabulary).view(1, -1)
    logits, state = model(ids)
    out = []
    for _ in range(length):
        probs = torch.softmax(logits[0, -1] / temperature, dim=-1)
        token = int(torch.multinomial(probs, 1, generator=generator))
        out.append(vocabulary[token])
        logits, state = model(torch.tensor([[token]]), state)
    return prompt + "".join(out)
