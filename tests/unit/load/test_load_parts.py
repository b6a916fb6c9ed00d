"""The load generator's parts without a network: bounds, pacing, statistics, metrics parsing."""

from __future__ import annotations

import asyncio
import math
import time

import numpy as np
import pytest
from rnnserve.client.load import prom
from rnnserve.client.load.config import ConfigError, LoadConfig
from rnnserve.client.load.pacing import Bounds, Pacer
from rnnserve.client.load.stats import Recorder, summarise


def test_default_run_is_one_session_per_worker() -> None:
    config = LoadConfig(concurrency=8, steps=50)
    assert config.session_budget == 8
    assert config.message_budget == 400


def test_duration_alone_leaves_sessions_unbounded_but_the_run_bounded() -> None:
    config = LoadConfig(concurrency=4, duration_s=2.0)
    assert config.session_budget is None
    assert config.message_budget is None


def test_max_messages_caps_the_message_budget() -> None:
    assert LoadConfig(concurrency=4, steps=100, sessions=10, max_messages=123).message_budget == 123


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("concurrency", 0),
        ("steps", 0),
        ("steps_per_message", 0),
        ("rate", -1.0),
        ("duration_s", 0.0),
        ("mode", "bogus"),
        ("target", "localhost"),
        ("connections", 0),
        ("window", 0),
    ],
)
def test_invalid_configs_are_refused(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field.split("_s")[0]):
        LoadConfig(**{field: value})  # type: ignore[arg-type]


def test_only_streams_pipeline() -> None:
    with pytest.raises(ConfigError, match="window"):
        LoadConfig(mode="step", window=8)


def test_generate_cannot_be_paced_by_the_client() -> None:
    with pytest.raises(ConfigError, match="rate"):
        LoadConfig(mode="generate", rate=100.0)


def test_bounds_hand_out_exactly_the_budget() -> None:
    bounds = Bounds(deadline=None, messages=5, sessions=2)
    assert [bounds.take_session() for _ in range(3)] == [True, True, False]
    assert sum(bounds.take_message() for _ in range(10)) == 5


def test_bounds_stop_at_the_deadline() -> None:
    bounds = Bounds(deadline=time.perf_counter() - 0.001, messages=None, sessions=None)
    assert not bounds.take_message()
    assert not bounds.take_session()


async def test_open_loop_pacer_returns_scheduled_slots_not_send_times() -> None:
    start = time.perf_counter()
    pacer = Pacer(interval=0.01, offset=0.005, start=start)
    slots = [await pacer.wait() for _ in range(3)]
    assert slots == pytest.approx([start + 0.005, start + 0.015, start + 0.025])
    # A late caller gets its missed slot back, so the delay shows up as latency.
    await asyncio.sleep(0.05)
    assert await pacer.wait() == pytest.approx(start + 0.035)


async def test_closed_loop_pacer_returns_now() -> None:
    pacer = Pacer(interval=None, offset=0.0, start=0.0)
    assert abs(await pacer.wait() - time.perf_counter()) < 0.01


def test_summary_rates_and_percentiles() -> None:
    recorder = Recorder()
    for i in range(1, 101):  # latencies 1..100 ms, 2 steps each, done over the first second
        recorder.ok(recorder.start + i / 100, i / 1000, 2)
    recorder.error("RESOURCE_EXHAUSTED")
    recorder.error("RESOURCE_EXHAUSTED")
    recorder.error("ABORTED")
    recorder.session_first_output(0.004)
    recorder.session_done()
    summary = summarise(recorder, duration_s=2.0, bucket_s=0.5)
    assert summary.messages_ok == 100
    assert summary.messages_failed == 3
    assert summary.steps_per_s == pytest.approx(100.0)
    assert summary.messages_per_s == pytest.approx(50.0)
    assert summary.sessions_per_s == pytest.approx(0.5)
    assert summary.latency.p(50) == pytest.approx(0.0505)
    assert summary.latency.p(99) == pytest.approx(0.09901)
    assert summary.latency.max == pytest.approx(0.1)
    assert summary.latency_per_step.p(50) == pytest.approx(0.02525)
    assert summary.first_output.p(50) == pytest.approx(0.004)
    assert list(summary.codes) == ["OK", "ABORTED", "RESOURCE_EXHAUSTED"]
    assert summary.codes["RESOURCE_EXHAUSTED"] == 2
    rates = [rate for _, rate in summary.throughput_over_time]
    assert sum(rate * 0.5 for rate in rates) == pytest.approx(200.0)
    assert rates[-1] == 0.0  # nothing finished in the last second


def test_empty_summary_is_nan_not_an_error() -> None:
    summary = summarise(Recorder(), duration_s=1.0, bucket_s=0.5)
    assert summary.messages_ok == 0
    assert math.isnan(summary.latency.p(50))
    assert summary.throughput_over_time == []


_BEFORE = """\
# HELP rnnserve_queue_seconds Time a step waited.
# TYPE rnnserve_queue_seconds histogram
rnnserve_queue_seconds_bucket{le="0.001",model="char-lstm"} 10.0
rnnserve_queue_seconds_count{model="char-lstm"} 10.0
rnnserve_queue_seconds_sum{model="char-lstm"} 0.01
rnnserve_queue_seconds_count{model="other"} 5.0
rnnserve_queue_seconds_sum{model="other"} 5.0
rnnserve_compute_seconds_count{model="char-lstm"} 4.0
rnnserve_compute_seconds_sum{model="char-lstm"} 0.004
rnnserve_batch_size_count{model="char-lstm"} 4.0
rnnserve_batch_size_sum{model="char-lstm"} 10.0
rnnserve_request_latency_seconds_count{method="Stream"} 10.0
rnnserve_request_latency_seconds_sum{method="Stream"} 0.02
"""
_AFTER = """\
rnnserve_queue_seconds_count{model="char-lstm"} 110.0
rnnserve_queue_seconds_sum{model="char-lstm"} 0.06
rnnserve_queue_seconds_count{model="other"} 500.0
rnnserve_queue_seconds_sum{model="other"} 99.0
rnnserve_compute_seconds_count{model="char-lstm"} 14.0
rnnserve_compute_seconds_sum{model="char-lstm"} 0.024
rnnserve_batch_size_count{model="char-lstm"} 14.0
rnnserve_batch_size_sum{model="char-lstm"} 110.0
rnnserve_steps_total{model="char-lstm"} 100.0
rnnserve_request_latency_seconds_count{method="Stream"} 110.0
rnnserve_request_latency_seconds_sum{method="Stream"} 0.12
rnnserve_request_latency_seconds_count{method="Step"} 1000.0
"""


def test_server_split_is_the_difference_between_scrapes_for_this_model() -> None:
    split = prom.server_split(
        prom.parse_samples(_BEFORE), prom.parse_samples(_AFTER), "char-lstm", "Stream"
    )
    assert split is not None
    assert split.steps_queued == 100
    assert split.queue_s == pytest.approx(0.0005)
    assert split.batches == 10
    assert split.compute_s == pytest.approx(0.002)
    assert split.batch_size == pytest.approx(10.0)
    assert split.compute_per_step_s == pytest.approx(0.0002)
    assert split.steps_computed == 100
    assert split.requests == 100
    assert split.request_s == pytest.approx(0.001)


def test_server_without_scheduler_metrics_gives_no_split() -> None:
    samples = prom.parse_samples('rnnserve_requests_total{method="Stream",code="OK"} 3\n')
    assert prom.server_split(samples, samples, "char-lstm") is None


def test_parse_samples_reads_labels_with_escapes_and_skips_junk() -> None:
    samples = prom.parse_samples('a{x="1",y="q\\"uote"} 2.5\nnot a sample\nb 1e3\n')
    assert samples[("a", frozenset({("x", "1"), ("y", 'q\\"uote')}))] == 2.5
    assert prom.total(samples, "b") == 1000.0
    assert np.isclose(prom.total(samples, "a", x="1"), 2.5)
