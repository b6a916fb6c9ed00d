"""What one load run does: the target, the workload shape and the bounds that always stop it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from rnnserve.client._call_policy import call_metadata
from rnnserve.client._credentials import CredentialError, bearer_metadata

Mode = Literal["stream", "step", "generate", "predict"]
OutputFormatName = Literal["raw", "probabilities", "top_k", "none"]
OutputStepsName = Literal["all", "last"]

MODES: tuple[Mode, ...] = ("stream", "step", "generate", "predict")
DEFAULT_TARGET = "127.0.0.1:50051"


class ConfigError(ValueError):
    """A load configuration that cannot run (bad bound, bad mode, ...)."""


@dataclass(frozen=True)
class LoadConfig:
    """One load run.

    Closed loop (the default): `concurrency` workers each run sessions one after another; a session
    sends `steps` messages, each waiting for its reply. Open loop (`rate` set): messages are
    scheduled at `rate` messages/s in all, spread evenly over the `concurrency` sessions; latency
    is measured from the scheduled send time, so a slow server cannot hide its queue (no
    coordinated omission).

    The run always stops by itself: after `sessions` sessions (default: one per worker), after
    `max_messages` messages, or after `duration_s`, whichever comes first.
    """

    target: str = DEFAULT_TARGET
    model: str = "char-lstm"
    version: int = 0
    mode: Mode = "stream"
    concurrency: int = 1
    steps: int = 100
    """Messages per session (for `generate`: tokens generated per session)."""
    steps_per_message: int = 1
    """Input steps (tokens or frames) each message carries; the prompt length for `generate`."""
    window: int = 1
    """`stream` mode: messages a session keeps in flight on its Stream (1 = wait for each reply)."""
    sessions: int | None = None
    """Sessions in all; default one per worker, or unbounded when only `duration_s` is set."""
    duration_s: float | None = None
    max_messages: int | None = None
    rate: float | None = None
    """Open loop: target messages per second in all; None = closed loop."""
    warmup_messages: int = 10
    """Messages each worker sends on a throw-away session before measuring (0 = no warm-up)."""
    start_position: int = 0
    """Feed each session this many steps (untimed, in big chunks) before its timed messages.
    For `predict`, the prefix length of the first timed message."""
    output_format: OutputFormatName = "raw"
    output_steps: OutputStepsName = "all"
    connections: int = 1
    """gRPC channels (HTTP/2 connections) the sessions are spread over, round-robin."""
    timeout_s: float = 30.0
    """Deadline of each call."""
    identity: str = "rnnserve-load"
    """Sent as `x-client-id` metadata (with a token: a sub-identity of its principal)."""
    token: str | None = dataclasses.field(default=None, repr=False)
    """Bearer token sent as `authorization: Bearer` on every call; never printed or reported."""
    tls: bool = False
    """Connect with TLS (implied by `tls_ca` and `tls_cert`)."""
    tls_ca: str | None = None
    """PEM CA bundle the server's certificate must chain to (default: the system's roots)."""
    tls_cert: str | None = None
    """PEM client certificate, for servers that require mutual TLS (with `tls_key`)."""
    tls_key: str | None = None
    tls_server_name: str | None = None
    """Name to check the server's certificate against, when the target's host differs."""
    metrics_url: str | None = None
    """The server's Prometheus endpoint, scraped before and after the timed phase."""
    seed: int = 0
    vocab_size: int = 100
    """Token range used when the server cannot describe the model (e.g. the echo server)."""
    feature_width: int = 1
    """Frame width used when the server cannot describe a feature model."""
    progress: bool = False
    time_bucket_s: float = 0.5
    """Width of the throughput-over-time buckets."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError if this run could not run or might never stop."""
        if self.mode not in MODES:
            raise ConfigError(f"mode: expected one of {', '.join(MODES)}, got {self.mode!r}")
        if self.concurrency < 1:
            raise ConfigError(f"concurrency: must be >= 1, got {self.concurrency}")
        if self.steps < 1:
            raise ConfigError(f"steps: must be >= 1, got {self.steps}")
        if self.steps_per_message < 1:
            raise ConfigError(f"steps_per_message: must be >= 1, got {self.steps_per_message}")
        if self.window < 1:
            raise ConfigError(f"window: must be >= 1, got {self.window}")
        if self.window > 1 and self.mode != "stream":
            raise ConfigError(f"window: only stream mode pipelines messages, not {self.mode}")
        if self.sessions is not None and self.sessions < 1:
            raise ConfigError(f"sessions: must be >= 1, got {self.sessions}")
        if self.duration_s is not None and self.duration_s <= 0:
            raise ConfigError(f"duration_s: must be > 0, got {self.duration_s}")
        if self.max_messages is not None and self.max_messages < 1:
            raise ConfigError(f"max_messages: must be >= 1, got {self.max_messages}")
        if self.rate is not None and self.rate <= 0:
            raise ConfigError(f"rate: must be > 0 messages/s, got {self.rate}")
        if self.rate is not None and self.mode == "generate":
            raise ConfigError("rate: generate is paced by the server; use the closed loop")
        if self.connections < 1:
            raise ConfigError(f"connections: must be >= 1, got {self.connections}")
        if self.warmup_messages < 0 or self.start_position < 0:
            raise ConfigError("warmup_messages and start_position must be >= 0")
        if self.timeout_s <= 0:
            raise ConfigError(f"timeout_s: must be > 0, got {self.timeout_s}")
        if self.time_bucket_s <= 0:
            raise ConfigError(f"time_bucket_s: must be > 0, got {self.time_bucket_s}")
        if not self.target or ":" not in self.target:
            raise ConfigError(f"target: expected host:port, got {self.target!r}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("tls_cert and tls_key: give both (a client certificate and its key)")
        try:
            bearer_metadata(self.token)
        except CredentialError as err:
            raise ConfigError(str(err)) from None

    @property
    def call_metadata(self) -> tuple[tuple[str, str], ...]:
        """The metadata every call of the run carries: the token (if any) and the identity."""
        return call_metadata(self.identity, self.token)

    @property
    def secure(self) -> bool:
        """Whether the run connects with TLS."""
        return self.tls or self.tls_ca is not None or self.tls_cert is not None

    @property
    def session_budget(self) -> int | None:
        """Sessions to run in all; None = until another bound stops the run."""
        if self.sessions is not None:
            return self.sessions
        if self.duration_s is not None or self.max_messages is not None:
            return None
        return self.concurrency

    @property
    def message_budget(self) -> int | None:
        """Timed messages in all, when the bounds fix it."""
        budgets = []
        if self.max_messages is not None:
            budgets.append(self.max_messages)
        sessions = self.session_budget
        if sessions is not None:
            budgets.append(sessions * self.steps)
        return min(budgets) if budgets else None

    def replace(self, **changes: object) -> LoadConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]
