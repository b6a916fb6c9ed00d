"""Next-value forecasting: random training windows, streaming evaluation with the state carried."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional


class ForecastTask:
    """Series of frames [days, width] with next-day targets; metric: MAE in the target's units.

    Evaluation runs each series from its first day with the state carried (as a server streams),
    and scores only the steps inside the split's date range.
    """

    metric = "mae"
    higher_is_better = False

    def __init__(
        self,
        series: list[tuple[np.ndarray, np.ndarray]],
        train_ranges: list[tuple[int, int, int]],
        eval_ranges: dict[str, list[tuple[int, int, int]]],
        input_mean: np.ndarray,
        input_std: np.ndarray,
        target_mean: float,
        target_std: float,
        batch_size: int,
        window: int,
    ) -> None:
        self.inputs = [torch.from_numpy((x - input_mean) / input_std) for x, _ in series]
        self.targets = [torch.from_numpy((y - target_mean) / target_std) for _, y in series]
        self.raw_targets = [torch.from_numpy(y) for _, y in series]
        self.train_ranges = train_ranges  # (series, first step, last step + 1)
        self.eval_ranges = eval_ranges
        self.target_mean, self.target_std = target_mean, target_std
        self.batch_size, self.window = batch_size, window

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None

    def train_loss(self, model: nn.Module, rng: np.random.Generator) -> tuple[torch.Tensor, int]:
        """L1 loss (it trains for MAE) on random windows from the training ranges."""
        xs, ys = [], []
        for _ in range(self.batch_size):
            series, first, stop = self.train_ranges[int(rng.integers(len(self.train_ranges)))]
            start = int(rng.integers(first, stop - self.window))
            xs.append(self.inputs[series][start : start + self.window])
            ys.append(self.targets[series][start : start + self.window])
        out, _ = model(torch.stack(xs))
        # the first steps of a window start from a zero state; score the warmed-up part only
        warm = self.window // 4
        loss = functional.l1_loss(out[:, warm:, 0], torch.stack(ys)[:, warm:])
        return loss, self.batch_size

    @torch.no_grad()
    def predictions(self, model: nn.Module, series: int) -> torch.Tensor:
        """Raw-unit predictions over a whole series, state carried from its first day."""
        model.eval()
        out, _ = model(self.inputs[series].unsqueeze(0))
        return out[0, :, 0] * self.target_std + self.target_mean

    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        errors = []
        for series, start, stop in self.eval_ranges[split]:
            predicted = self.predictions(model, series)[start:stop]
            errors.append((predicted - self.raw_targets[series][start:stop]).abs())
        mae = float(torch.cat(errors).mean())
        return {"mae": mae, "loss": mae}
