"""The rnnserve load generator, as a library: build a LoadConfig, call run_load, read the result."""

from rnnserve.client.load.config import ConfigError, LoadConfig
from rnnserve.client.load.report import format_json, format_table
from rnnserve.client.load.runner import LoadResult, run_load, run_load_async
from rnnserve.client.load.stats import Distribution, Summary

__all__ = [
    "ConfigError",
    "Distribution",
    "LoadConfig",
    "LoadResult",
    "Summary",
    "format_json",
    "format_table",
    "run_load",
    "run_load_async",
]
