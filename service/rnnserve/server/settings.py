"""Server configuration: one object from RNNSERVE_* environment variables; CLI flags map 1:1."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of the server. Field `foo_bar` is env `RNNSERVE_FOO_BAR` and flag `--foo-bar`."""

    model_config = SettingsConfigDict(env_prefix="RNNSERVE_", extra="forbid")

    host: str = Field(default="127.0.0.1", description="Address the gRPC server binds.")
    port: int = Field(default=50051, ge=0, le=65535, description="gRPC port (0 picks a free one).")
    metrics_port: int | None = Field(
        default=9090,
        description="Prometheus metrics HTTP port on `metrics_host`; unset/-1 disables it.",
    )
    model_repository: Path = Field(
        default=Path("models/repository"), description="Folder of <name>/model.json + <version>/."
    )
    models: list[str] | None = Field(
        default=None, description="Serve only these model names (default: every model found)."
    )
    session_ttl_s: float = Field(
        default=600.0, gt=0, description="Idle time before a session expires."
    )
    max_sessions: int = Field(default=100_000, gt=0, description="Most live sessions in all.")
    max_steps_per_message: int = Field(
        default=4096, gt=0, description="Most steps one message (or prompt) may carry."
    )
    max_generate_tokens: int = Field(
        default=4096, gt=0, description="Cap on Generate's max_tokens."
    )
    max_batch_size: int = Field(
        default=256, gt=0, description="Most sessions one onnxruntime call serves."
    )
    max_queue: int = Field(
        default=4096,
        gt=0,
        description="Most messages waiting per model version; beyond it RESOURCE_EXHAUSTED.",
    )
    intra_op_threads: int = Field(
        default=1,
        ge=0,
        description="onnxruntime intra-op threads per model (0 = onnxruntime's choice).",
    )
    snapshot_dir: Path | None = Field(
        default=None,
        description="Where live sessions are written on graceful shutdown and restored at start.",
    )
    snapshot_secret: SecretStr | None = Field(
        default=None, description="If set, snapshots are HMAC-SHA256 signed and verified with it."
    )
    snapshot_secret_file: Path | None = Field(
        default=None,
        description="File whose content (stripped) is the snapshot secret; wins over the value.",
    )
    # ---- security: TLS, authentication (README "Security") ------------------------------------
    tls_cert_file: Path | None = Field(
        default=None, description="PEM server certificate (chain); with tls_key_file turns on TLS."
    )
    tls_key_file: Path | None = Field(default=None, description="PEM private key of tls_cert_file.")
    tls_client_ca_file: Path | None = Field(
        default=None,
        description="PEM CA bundle: when set, clients must present a certificate it signed (mTLS).",
    )
    auth_tokens_file: Path | None = Field(
        default=None,
        description="File of `sha256:<hex> <principal>` lines (token hashes, never tokens).",
    )
    allow_unauthenticated: bool = Field(
        default=False,
        description="Allow a non-loopback listener with no authentication (an explicit opt-in).",
    )
    auth_open_health: bool = Field(
        default=True, description="Health checks need no token (probes, load balancers)."
    )
    auth_open_reflection: bool = Field(
        default=True, description="Server reflection needs no token (grpcurl without a .proto)."
    )
    metrics_host: str = Field(
        default="127.0.0.1", description="Address the metrics endpoint binds (loopback by default)."
    )
    metrics_auth: bool = Field(
        default=False, description="The metrics endpoint asks for the same bearer tokens."
    )
    # ---- bounded work: checked before any decoding ---------------------------------------------
    max_text_bytes: int = Field(
        default=65_536, gt=0, description="Most UTF-8 bytes of text per message or prompt."
    )
    max_predict_sequences: int = Field(
        default=1024, gt=0, description="Most sequences one Predict may carry."
    )
    max_stop_strings: int = Field(default=16, ge=0, description="Most stop strings per Generate.")
    max_stop_string_bytes: int = Field(
        default=256, gt=0, description="Longest stop string (UTF-8 bytes)."
    )
    max_id_length: int = Field(
        default=128, gt=0, description="Longest session, sequence or client id (characters)."
    )
    max_metadata_bytes: int = Field(
        default=16_384, gt=0, description="Most bytes of request metadata (headers) per call."
    )
    # ---- fairness -------------------------------------------------------------------------------
    max_sessions_per_principal: int = Field(
        default=100_000, gt=0, description="Most live sessions one principal may hold."
    )
    max_calls_per_principal: int = Field(
        default=1024, gt=0, description="Most concurrent calls (streams included) per principal."
    )
    generate_write_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="A Generate whose client reads nothing for this long is ended.",
    )
    # ---- state tier (README "Scale out") ---------------------------------------------------------
    state_store: Literal["memory", "redis"] = Field(
        default="memory",
        description="Where session state lives: memory (one process) or redis (shared, failover).",
    )
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0", description="The Redis server of the redis state store."
    )
    durability: Literal["sync", "batch", "none"] = Field(
        default="sync",
        description="redis: sync (reply after Redis has the state), batch, or none (evict/stop).",
    )
    batch_interval_s: float = Field(
        default=1.0,
        ge=0,
        description="redis, batch: longest a step's write waits to be sent with later ones.",
    )
    owner_lease_s: float = Field(
        default=10.0, gt=0, description="redis: how long a process owns a session without renewal."
    )
    instance_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="redis: this process's owner name (default: random per start, logged).",
    )
    session_cache_size: int = Field(
        default=0,
        ge=0,
        description="redis: most sessions held in memory, LRU idle ones evicted (0 = no bound).",
    )
    shutdown_grace_s: float = Field(default=10.0, ge=0, description="Drain time on SIGTERM.")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Least severe log level written."
    )
    log_json: bool = Field(default=False, description="Structured JSON logs, one object per line.")
