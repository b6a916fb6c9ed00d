"""Reads the server's Prometheus metrics before and after a run: its queue vs compute split."""

from __future__ import annotations

import math
import re
import urllib.request
from dataclasses import dataclass

# Names in service/rnnserve/server/metrics.py (histograms expose <name>_sum and <name>_count).
QUEUE_SECONDS = "rnnserve_queue_seconds"
COMPUTE_SECONDS = "rnnserve_compute_seconds"
BATCH_SIZE = "rnnserve_batch_size"
STEPS = "rnnserve_steps_total"
REQUEST_LATENCY = "rnnserve_request_latency_seconds"

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_samples(text: str) -> Samples:
    """Parse the Prometheus text exposition format into {(name, labels): value}."""
    samples: Samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match is None:
            continue
        name, labels, value = match.groups()
        try:
            number = float(value)
        except ValueError:
            continue
        pairs = frozenset(_LABEL.findall(labels or ""))
        samples[(name, pairs)] = number
    return samples


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of every sample called `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(
        value for (sample, pairs), value in samples.items() if sample == name and wanted <= pairs
    )


def scrape(url: str, timeout_s: float = 5.0, token: str | None = None) -> Samples:
    """Fetch and parse a metrics endpoint (blocking; call it off the event loop).

    `token` is sent as `Authorization: Bearer` for a server started with `metrics_auth`.
    """
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return parse_samples(response.read().decode("utf-8", errors="replace"))


@dataclass
class ServerSplit:
    """Where the server spent a step's time during the run, from its own histograms.

    `queue_s`: mean time a step waited before its batch started. `compute_s`: mean time of one
    onnxruntime batch call. `batch_size`: mean sessions per batch call. `request_s`: mean time
    from receiving a request (or in-stream message) to sending its reply, for `method`.
    """

    steps_queued: int
    queue_s: float
    batches: int
    compute_s: float
    batch_size: float
    steps_computed: int = 0
    method: str = ""
    requests: int = 0
    request_s: float = math.nan

    @property
    def compute_per_step_s(self) -> float:
        """Batch compute time shared out over the sessions in the batch."""
        return self.compute_s / self.batch_size if self.batch_size else math.nan


def server_split(
    before: Samples, after: Samples, model: str | None = None, method: str = ""
) -> ServerSplit | None:
    """The split over the interval between two scrapes; None if the server exports none of it."""
    labels = {"model": model} if model else {}

    def delta(name: str) -> float:
        # Fall back to every model when this model's label is absent from the metric.
        value = total(after, name, **labels) - total(before, name, **labels)
        if labels and total(after, name, **labels) == 0:
            value = total(after, name) - total(before, name)
        return value

    queued = delta(QUEUE_SECONDS + "_count")
    batches = delta(COMPUTE_SECONDS + "_count")
    if queued <= 0 and batches <= 0:
        return None
    batch_count = delta(BATCH_SIZE + "_count")
    requests = total(after, REQUEST_LATENCY + "_count", method=method) - total(
        before, REQUEST_LATENCY + "_count", method=method
    )
    request_sum = total(after, REQUEST_LATENCY + "_sum", method=method) - total(
        before, REQUEST_LATENCY + "_sum", method=method
    )
    return ServerSplit(
        steps_computed=int(delta(STEPS)),
        method=method,
        requests=int(requests),
        request_s=request_sum / requests if requests > 0 else math.nan,
        steps_queued=int(queued),
        queue_s=delta(QUEUE_SECONDS + "_sum") / queued if queued > 0 else math.nan,
        batches=int(batches),
        compute_s=delta(COMPUTE_SECONDS + "_sum") / batches if batches > 0 else math.nan,
        batch_size=delta(BATCH_SIZE + "_sum") / batch_count if batch_count > 0 else math.nan,
    )
