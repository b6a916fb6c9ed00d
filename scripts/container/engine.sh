# shellcheck shell=bash
# Private Docker engine for the container test: install if missing, start with paths under $CTR_WORK,
# stop by pid. Sourced by scripts/container_test.sh; expects CTR_WORK to be set.
# Why private paths: these machines run no system dockerd, and a test must never touch a daemon,
# images or volumes that belong to someone else.

ctr_log() { printf '[container-test %5ss] %s\n' "$SECONDS" "$*" >&2; }

ctr_die() {
  printf '\n########## CONTAINER TEST FAILED ##########\n%s\n' "$*" >&2
  exit 1
}

# Installs dockerd, the docker CLI and debootstrap from Debian when any of them is missing.
ctr_ensure_tools() {
  local missing=()
  command -v dockerd >/dev/null || missing+=(docker.io)
  command -v docker >/dev/null || missing+=(docker.io)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  [ ${#missing[@]} -eq 0 ] && return 0
  ctr_log "installing ${missing[*]} with apt-get"
  [ "$(id -u)" -eq 0 ] || ctr_die "need root to apt-get install ${missing[*]} (and to run dockerd)"
  if ! { DEBIAN_FRONTEND=noninteractive apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap; } \
    >"$CTR_WORK/apt.log" 2>&1; then
    tail -20 "$CTR_WORK/apt.log" >&2
    ctr_die "apt-get install docker.io debootstrap failed (log $CTR_WORK/apt.log)"
  fi
}

# Starts dockerd on a private socket and exports DOCKER_HOST; fails loudly if it cannot start.
ctr_start_engine() {
  local pidfile="$CTR_WORK/dockerd.pid" old
  export DOCKER_HOST="unix://$CTR_WORK/docker.sock"
  # A dockerd left by a run that was killed outright (no trap ran) still holds our data root;
  # it is ours (same private socket), so stop it by its pid before starting afresh.
  if [ -s "$pidfile" ]; then
    old="$(cat "$pidfile")"
    if kill -0 "$old" 2>/dev/null && tr '\0' ' ' <"/proc/$old/cmdline" | grep -q -- "$CTR_WORK/docker.sock"; then
      ctr_log "stopping dockerd $old left by an earlier run"
      kill "$old"
      for _ in $(seq 1 50); do kill -0 "$old" 2>/dev/null || break; sleep 0.2; done
    fi
    rm -f "$pidfile"
  fi
  ctr_log "starting dockerd (data root $CTR_WORK/data)"
  dockerd --data-root "$CTR_WORK/data" --exec-root "$CTR_WORK/exec" -H "$DOCKER_HOST" \
    --pidfile "$pidfile" --mtu 1400 >"$CTR_WORK/dockerd.log" 2>&1 &
  CTR_DOCKERD_PID=$!
  for _ in $(seq 1 150); do
    if docker version >/dev/null 2>&1; then
      ctr_log "engine up: $(docker version -f 'server {{.Server.Version}}, API {{.Server.APIVersion}}')"
      return 0
    fi
    kill -0 "$CTR_DOCKERD_PID" 2>/dev/null || break
    sleep 0.2
  done
  tail -30 "$CTR_WORK/dockerd.log" >&2 || true
  ctr_die "the Docker engine could not start (dockerd log above, full log $CTR_WORK/dockerd.log).
This test needs a real engine; it does not skip."
}

# Stops the dockerd this script started, by its pid, waiting for it to exit.
ctr_stop_engine() {
  [ -n "${CTR_DOCKERD_PID:-}" ] || return 0
  kill -0 "$CTR_DOCKERD_PID" 2>/dev/null || return 0
  ctr_log "stopping dockerd $CTR_DOCKERD_PID"
  kill "$CTR_DOCKERD_PID" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$CTR_DOCKERD_PID" 2>/dev/null || return 0; sleep 0.2; done
  ctr_log "dockerd $CTR_DOCKERD_PID ignored SIGTERM for 20 s; sending SIGKILL"
  kill -9 "$CTR_DOCKERD_PID" 2>/dev/null || true
}
