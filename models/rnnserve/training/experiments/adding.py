"""The adding problem (Hochreiter & Schmidhuber 1997): remember two marked numbers over T steps."""

from __future__ import annotations

import torch


def adding_batch(
    batch: int, length: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs [batch, length, 2] (value, marker), targets [batch]: the sum of the marked values.

    One marker falls in the first half and one in the second, so the first must be carried for
    at least length/2 steps. Always answering 1.0 scores MSE = Var(U+U) = 1/6 = 0.167.
    """
    values = torch.rand(batch, length, generator=generator)
    markers = torch.zeros(batch, length)
    half = length // 2
    first = torch.randint(0, half, (batch,), generator=generator)
    second = torch.randint(half, length, (batch,), generator=generator)
    rows = torch.arange(batch)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    targets = values[rows, first] + values[rows, second]
    return torch.stack([values, markers], dim=-1), targets
