"""Prometheus metrics (default registry): the transport counts requests, the core the rest."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

REQUESTS = Counter(
    "rnnserve_requests_total",
    "Requests (or in-stream messages) by method and status code.",
    ["method", "code"],
)
REQUEST_LATENCY = Histogram(
    "rnnserve_request_latency_seconds",
    "Time from receiving a request to sending its reply.",
    ["method"],
    buckets=_LATENCY_BUCKETS,
)
QUEUE_TIME = Histogram(
    "rnnserve_queue_seconds",
    "Time a step waited in the scheduler before its onnxruntime call.",
    ["model"],
    buckets=_LATENCY_BUCKETS,
)
COMPUTE_TIME = Histogram(
    "rnnserve_compute_seconds",
    "Duration of one onnxruntime call (one batch).",
    ["model"],
    buckets=_LATENCY_BUCKETS,
)
BATCH_SIZE = Histogram(
    "rnnserve_batch_size",
    "Sessions (sequences) served by one onnxruntime call.",
    ["model"],
    buckets=_BATCH_BUCKETS,
)
STEPS = Counter("rnnserve_steps_total", "Time steps computed, over all sessions.", ["model"])
ACTIVE_SESSIONS = Gauge("rnnserve_active_sessions", "Live sessions.", ["model"])
EVICTIONS = Counter(
    "rnnserve_session_evictions_total",
    "Sessions removed other than by close: expired (idle TTL), reclaimed (expired, freed for a new "
    "session).",
    ["reason"],
)
SNAPSHOT_UNRESTORED = Counter(
    "rnnserve_snapshot_unrestored_total",
    "Saved sessions this start could not restore and kept aside in snapshot_dir (retried at every "
    "start), by reason: signature, model, capacity, corrupt, format, other; unreadable counts "
    "whole files moved aside.",
    ["reason"],
)
STATE_BYTES = Gauge(
    "rnnserve_state_bytes", "Bytes of recurrent state held by live sessions.", ["model"]
)
TIER_DURABLE_LAG = Gauge(
    "rnnserve_state_tier_durable_lag_steps",
    "Steps held in memory and not yet acknowledged by the state tier, over all sessions (what a "
    "kill -9 would lose with durability batch or none; 0 with sync).",
)
TIER_WRITES_IN_FLIGHT = Gauge(
    "rnnserve_state_tier_writes_in_flight",
    "Session records in the state-tier write being sent now (batch mode's loss window).",
)
TIER_ERRORS = Counter(
    "rnnserve_state_tier_errors_total",
    "State-tier failures by kind: unavailable (Redis did not answer), moved (another process "
    "owns the session; this copy dropped), invalid (a record this server cannot use).",
    ["kind"],
)
TIER_LOADS = Counter(
    "rnnserve_state_tier_loads_total",
    "Sessions loaded from the state tier into this process's memory (failover or reload after "
    "eviction).",
)
TIER_EVICTIONS = Counter(
    "rnnserve_state_tier_evictions_total",
    "Idle sessions dropped from memory to the state tier (session_cache_size).",
)
TIER_REPLIES_AGAIN = Counter(
    "rnnserve_state_tier_replies_again_total",
    "Retried messages answered from the session's kept last reply (the step had run and its "
    "reply was lost, e.g. with the process that ran it); the step was not run again.",
)
