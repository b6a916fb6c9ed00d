"""One configurable recurrent network: rnn/gru/lstm, token or feature input, a head per step."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

CellName = Literal["rnn", "gru", "lstm"]
State = tuple[torch.Tensor, ...]

_CELLS: dict[str, Callable[..., nn.RNNBase]] = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}


@dataclass(frozen=True)
class NetworkSpec:
    """The shape of a network; saved in checkpoints so a model can be rebuilt from one."""

    cell: CellName
    layers: int
    hidden_size: int
    output_size: int
    vocab_size: int | None = None  # token input: embedding lookup
    embedding_size: int | None = None
    input_width: int | None = None  # feature input: [batch, time, width]
    bidirectional: bool = False
    dropout: float = 0.0

    @classmethod
    def from_config(
        cls,
        network: Mapping[str, Any],
        *,
        output_size: int,
        vocab_size: int | None = None,
        input_width: int | None = None,
        bidirectional: bool = False,
        default_embedding_size: int = 64,
    ) -> NetworkSpec:
        """The spec a config's `network` section gives; the data gives input and output sizes."""
        return cls(
            cell=network["cell"],
            layers=network["layers"],
            hidden_size=network["hidden_size"],
            output_size=output_size,
            vocab_size=vocab_size,
            embedding_size=(
                network.get("embedding_size", default_embedding_size) if vocab_size else None
            ),
            input_width=input_width,
            bidirectional=bidirectional,
            dropout=network.get("dropout", 0.0),
        )

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def state_count(self) -> int:
        """Number of state tensors: (h, c) for an LSTM, (h,) otherwise."""
        return 2 if self.cell == "lstm" else 1


class RecurrentNet(nn.Module):
    """Embedding (or raw features) -> stacked recurrent layers -> linear head at every step.

    Every task uses the per-step head: a language model's next-token logits, a classifier's
    prediction for the prefix so far, a forecaster's next value, a tagger's tag.
    """

    def __init__(self, spec: NetworkSpec) -> None:
        super().__init__()
        self.spec = spec
        if spec.vocab_size is not None:
            if spec.embedding_size is None:
                raise ValueError("token input needs embedding_size")
            self.embedding: nn.Embedding | None = nn.Embedding(spec.vocab_size, spec.embedding_size)
            width = spec.embedding_size
        elif spec.input_width is not None:
            self.embedding = None
            width = spec.input_width
        else:
            raise ValueError("give vocab_size (tokens) or input_width (features)")
        self.recurrent = _CELLS[spec.cell](
            width,
            spec.hidden_size,
            num_layers=spec.layers,
            batch_first=True,
            bidirectional=spec.bidirectional,
            dropout=spec.dropout if spec.layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(spec.dropout)
        self.head = nn.Linear(spec.hidden_size * spec.directions, spec.output_size)

    def initial_state(self, batch: int) -> State:
        """Zero state tensors in PyTorch's layout [layers*directions, batch, hidden]."""
        shape = (self.spec.layers * self.spec.directions, batch, self.spec.hidden_size)
        device = self.head.weight.device
        return tuple(torch.zeros(shape, device=device) for _ in range(self.spec.state_count))

    def _embed(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.embedding(inputs) if self.embedding is not None else inputs

    def forward(
        self, inputs: torch.Tensor, state: State | None = None
    ) -> tuple[torch.Tensor, State]:
        """[batch, time] ids or [batch, time, width] -> (outputs [batch, time, out], state)."""
        embedded = self.dropout(self._embed(inputs))
        if state is None:
            state = self.initial_state(inputs.shape[0])
        packed_state = state if self.spec.cell == "lstm" else state[0]
        hidden, new_state = self.recurrent(embedded, packed_state)
        out = self.head(self.dropout(hidden))
        return out, (tuple(new_state) if isinstance(new_state, tuple) else (new_state,))

    def forward_padded(self, inputs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Run right-padded sequences as if each ran alone (packing), for whole-sequence tasks."""
        embedded = self.dropout(self._embed(inputs))
        packed = pack_padded_sequence(
            embedded, lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        hidden, _ = self.recurrent(packed)
        unpacked, _ = pad_packed_sequence(hidden, batch_first=True, total_length=inputs.shape[1])
        return self.head(self.dropout(unpacked))

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())


def set_forget_gate_bias(model: RecurrentNet, value: float) -> None:
    """Start every LSTM layer's forget gate at `value` (Jozefowicz et al. 2015 use 1).

    PyTorch initialises both LSTM biases uniformly around 0, so the forget gate starts half open;
    a bias of 1 keeps more of the cell state early in training. The gate's share of `bias_ih`
    (PyTorch's gate order is input, forget, cell, output) is set to `value` and that of `bias_hh`
    to 0, so their sum is `value`. Fills do not draw random numbers: the rest of the
    initialisation, and everything seeded after it, is unchanged.
    """
    if model.spec.cell != "lstm":
        raise ValueError(f"forget_bias applies to LSTMs, not {model.spec.cell!r}")
    hidden = model.spec.hidden_size
    with torch.no_grad():
        for name, parameter in model.recurrent.named_parameters():
            if name.startswith("bias_ih"):
                parameter[hidden : 2 * hidden].fill_(value)
            elif name.startswith("bias_hh"):
                parameter[hidden : 2 * hidden].zero_()


def detach_state(state: State) -> State:
    """Cut the graph at a chunk boundary (truncated BPTT) while keeping the values."""
    return tuple(tensor.detach() for tensor in state)
