# rnnserve server image: onnxruntime + gRPC, no torch, no compilers; runs as a non-root user.
# Build:  docker build -t rnnserve .        Run:  docker run -p 127.0.0.1:50051:50051 rnnserve
# Tests swap the base with --build-arg BASE_IMAGE=... (scripts/container_test.sh). Classic-builder
# syntax only (no BuildKit features), so any engine builds it.
ARG BASE_IMAGE=python:3.11-slim

# ---- requirements stage: rnnserve[server]'s requirements, read from pyproject.toml -----------
# A stage of its own so that the dependency layer below is keyed on the requirements alone:
# edits elsewhere in pyproject.toml (dev tools, lint settings) keep it cached.
FROM ${BASE_IMAGE} AS requirements
COPY pyproject.toml scripts/container/image_requirements.py /tmp/
# server + redis: the redis client (pure Python) lets the image run as a replica on the shared
# state tier (RNNSERVE_STATE_STORE=redis, docker-compose.yml's `scale` profile).
RUN python3 /tmp/image_requirements.py --pyproject /tmp/pyproject.toml server redis \
      >/tmp/requirements.txt \
 && python3 /tmp/image_requirements.py --pyproject /tmp/pyproject.toml --build-system \
      >/tmp/build-requirements.txt

# ---- build stage: the wheel, and a venv holding exactly rnnserve[server] ----------------------
FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# pip (with the wheel's build backend) lives in a tool venv of its own and installs into the
# runtime venv with --python, so the image ships no pip.
COPY --from=requirements /tmp/requirements.txt /tmp/build-requirements.txt /tmp/
RUN python3 -m venv /opt/pip-tool \
 && /opt/pip-tool/bin/pip install --no-cache-dir -r /tmp/build-requirements.txt \
 && python3 -m venv --without-pip /opt/rnnserve \
 && /opt/pip-tool/bin/pip --python /opt/rnnserve/bin/python install --no-cache-dir \
      -r /tmp/requirements.txt

# The project itself, installed under a staging root so the runtime stage copies it as one
# small layer on top of the (cached) dependency layer.
COPY pyproject.toml README.md ./
COPY protos/rnnserve protos/rnnserve
COPY service/rnnserve service/rnnserve
COPY client/rnnserve client/rnnserve
COPY models/rnnserve models/rnnserve
RUN /opt/pip-tool/bin/pip wheel --no-cache-dir --no-deps --no-build-isolation \
      --wheel-dir /tmp/wheels . \
 && /opt/pip-tool/bin/pip --python /opt/rnnserve/bin/python install --no-cache-dir --no-deps \
      --root /tmp/app /tmp/wheels/rnnserve-*.whl

# ---- runtime stage ---------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime
LABEL org.opencontainers.image.title="rnnserve" \
      org.opencontainers.image.description="Stateful gRPC server for recurrent networks (ONNX)" \
      org.opencontainers.image.licenses="Apache-2.0"

RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin rnnserve \
 && mkdir -p /var/lib/rnnserve/snapshots \
 && chown -R 10001:10001 /var/lib/rnnserve

COPY --from=build /opt/rnnserve /opt/rnnserve
COPY --from=build /tmp/app/opt/rnnserve /opt/rnnserve
# Runs `rnnserve "$@"`; for `serve` without a secret given, it generates one in the snapshot
# volume at first start (see the script), so snapshots are always signed and no secret ships here.
COPY scripts/container/entrypoint.sh /usr/local/bin/rnnserve-entrypoint.sh
# The shipped models; mount a folder over /models to serve others.
COPY models/repository /models

# ORT_DISABLE_TELEMETRY: a server has no business persisting a device id (and the non-root user
# has no home to persist it in, which onnxruntime would warn about at every start).
# Inside the container the server listens on every interface (0.0.0.0), which the server refuses
# without authentication unless told otherwise: RNNSERVE_ALLOW_UNAUTHENTICATED=true says so for
# the local set-up, where the ports are published on 127.0.0.1 only (docker run -p 127.0.0.1:...,
# docker-compose.yml). Publishing them further needs tokens: mount a tokens file, set
# RNNSERVE_AUTH_TOKENS_FILE to it and RNNSERVE_ALLOW_UNAUTHENTICATED=false (README, "Security").
ENV PATH=/opt/rnnserve/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    RNNSERVE_HOST=0.0.0.0 \
    RNNSERVE_ALLOW_UNAUTHENTICATED=true \
    RNNSERVE_PORT=50051 \
    RNNSERVE_METRICS_HOST=0.0.0.0 \
    RNNSERVE_METRICS_PORT=9090 \
    RNNSERVE_MODEL_REPOSITORY=/models \
    RNNSERVE_SNAPSHOT_DIR=/var/lib/rnnserve/snapshots \
    RNNSERVE_SHUTDOWN_GRACE_S=5 \
    ORT_DISABLE_TELEMETRY=1
# Live sessions are written here on SIGTERM and read back at start: `docker restart` keeps them.
# They are signed (HMAC) with RNNSERVE_SNAPSHOT_SECRET_FILE, or the secret the entrypoint generated
# here at first start (.snapshot-secret, 0600).
VOLUME ["/var/lib/rnnserve/snapshots"]
WORKDIR /var/lib/rnnserve
USER 10001:10001
EXPOSE 50051 9090

HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["rnnserve", "healthcheck"]
# The server drains in-flight steps and snapshots sessions on SIGTERM within
# RNNSERVE_SHUTDOWN_GRACE_S, inside docker stop's default 10 s.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/bin/sh", "/usr/local/bin/rnnserve-entrypoint.sh"]
CMD ["serve"]
