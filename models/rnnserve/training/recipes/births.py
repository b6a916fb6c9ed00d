"""Next-day births forecaster (feature input), compared with the seasonal-naive forecast."""

from __future__ import annotations

import datetime as dt

import numpy as np
from rnnserve.training.config import RunConfig
from rnnserve.training.datasets import births
from rnnserve.training.model import NetworkSpec
from rnnserve.training.recipe import Recipe
from rnnserve.training.tasks.forecast import ForecastTask
from torch import nn

# Split by calendar year of the forecast day: train on 1969-1988 and 2000-2010,
# validate on 2011-2012, test on 2013-2014 (the future of everything trained on).
VALIDATION_YEARS = (2011, 2012)
TEST_YEARS = (2013, 2014)


def _year_range(dates: list[dt.date], years: tuple[int, int]) -> tuple[int, int]:
    # step t forecasts day t+1, so select steps by the year of dates[t + 1]
    steps = [t for t in range(len(dates) - 1) if years[0] <= dates[t + 1].year <= years[1]]
    return steps[0], steps[-1] + 1


def seasonal_naive_mae(series: births.Series, start: int, stop: int) -> float:
    """Forecast for day t+1 = births on day t-6 (same weekday, one week earlier)."""
    truth = series.births[start + 1 : stop + 1]
    forecast = series.births[start - 6 : stop - 6]
    return float(np.abs(truth - forecast).mean())


def build(config: RunConfig) -> Recipe:
    """Normalisation statistics come from the training steps only and are baked into the graph."""
    raw = births.load_series()
    framed = [births.frames(s) for s in raw]
    old, new = framed
    val_range = _year_range(raw[1].dates, VALIDATION_YEARS)
    test_range = _year_range(raw[1].dates, TEST_YEARS)
    train_ranges = [(0, 0, len(old[1])), (1, 0, val_range[0])]
    train_x = np.concatenate([old[0], new[0][: val_range[0]]])
    train_y = np.concatenate([old[1], new[1][: val_range[0]]])
    mean, std = train_x.mean(0), np.maximum(train_x.std(0), 1e-3)
    target_mean, target_std = float(train_y.mean()), float(train_y.std())
    task = ForecastTask(
        framed,
        train_ranges,
        {"validation": [(1, *val_range)], "test": [(1, *test_range)]},
        mean,
        std,
        target_mean,
        target_std,
        batch_size=config.training.batch_size,
        window=config.training.seq_len,
    )
    spec = NetworkSpec.from_config(
        config.network, input_width=len(births.FEATURE_NAMES), output_size=1
    )

    def finish(model: nn.Module) -> tuple[dict[str, float], dict[str, str]]:
        test_mae = task.evaluate(model, "test")["mae"]
        naive_test = seasonal_naive_mae(raw[1], *test_range)
        naive_val = seasonal_naive_mae(raw[1], *val_range)
        metrics = {
            "test_mae_thousands": test_mae,
            "baseline_seasonal_naive_test_mae_thousands": naive_test,
            "baseline_seasonal_naive_val_mae_thousands": naive_val,
            "test_mae_reduction_vs_seasonal_naive": 1 - test_mae / naive_test,
        }
        notes = {
            "units": "births per day in thousands, in and out (normalisation inside the graph)",
            "frame": "step t: births on day t and the calendar of day t+1; output: births, day t+1",
            "split": "train 1969-1988 + 2000-2010, validation 2011-12, test 2013-14 (forecast day)",
        }
        return metrics, notes

    return Recipe(
        spec=spec,
        task=task,
        input_kind="features",
        feature_names=births.FEATURE_NAMES,
        output_meaning="value",
        input_mean=[float(v) for v in mean],
        input_std=[float(v) for v in std],
        output_mean=target_mean,
        output_std=target_std,
        data={
            "name": "US daily births (CDC/NCHS 1969-1988, SSA 2000-2014)",
            "source": births.SOURCE,
            "licence": births.LICENCE,
            "sha256": "74f2ea206f6f72f57dc65cd7b67b1df148422c53821639a8f2afb1129ebc2d5d "
            "1ed98d684bc3235ed59872b2d1652366320985c39fb5d5e77e7cb37d0da9e3fa",
            "splits": {
                "train": len(train_y),
                "validation": val_range[1] - val_range[0],
                "test": test_range[1] - test_range[0],
            },
        },
        finish=finish,
    )
