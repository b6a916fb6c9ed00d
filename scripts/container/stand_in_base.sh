# shellcheck shell=bash
# Builds (once, then reuses) a local stand-in for python:3.11-slim, because these machines reach no
# container registry. Sourced by scripts/container_test.sh after the engine is up.
# The stand-in is Debian bookworm (its python3 is 3.11, like python:3.11-slim) made by debootstrap
# from the Debian mirror apt already uses, plus this machine's CA certificates so that pip inside
# the image build passes the TLS-inspecting proxy. Those certificates live only in this test-only
# image; the product Dockerfile never sees them.

CTR_BASE_IMAGE="localhost/rnnserve-stand-in/python:3.11-slim"

# The Debian mirror URL apt is configured with (deb822 or one-line format); never hard-coded.
ctr_debian_mirror() {
  local url=""
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    url="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)"
  fi
  if [ -z "$url" ]; then
    url="$(grep -hE '^deb [^ ]+ bookworm ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
      2>/dev/null | awk '{print $2; exit}')"
  fi
  [ -n "$url" ] || ctr_die "found no Debian bookworm mirror in /etc/apt/sources.list*"
  printf '%s\n' "$url"
}

# Content key of everything the stand-in is made from: rebuild only when it changes.
ctr_base_key() {
  {
    printf 'recipe-v1 %s\n' "$(ctr_debian_mirror)"
    cat /usr/local/share/ca-certificates/*.crt 2>/dev/null || true
  } | sha256sum | cut -c1-16
}

ctr_ensure_stand_in_base() {
  local key have rootfs_tar="$CTR_WORK/base/rootfs-bookworm.tar" ctx="$CTR_WORK/base/context"
  key="$(ctr_base_key)"
  have="$(docker image inspect -f '{{index .Config.Labels "rnnserve.stand-in.key"}}' \
    "$CTR_BASE_IMAGE" 2>/dev/null || true)"
  if [ "$have" = "$key" ]; then
    ctr_log "stand-in base cached: $CTR_BASE_IMAGE"
    return 0
  fi
  mkdir -p "$CTR_WORK/base"
  if [ ! -s "$rootfs_tar" ]; then
    local mirror rootfs="$CTR_WORK/base/rootfs"
    mirror="$(ctr_debian_mirror)"
    ctr_log "debootstrap bookworm (minbase + python3) from $mirror: about a minute, once"
    rm -rf "$rootfs"
    debootstrap --variant=minbase \
      --include=python3,python3-venv,python3-pip,ca-certificates \
      bookworm "$rootfs" "$mirror" >"$CTR_WORK/base/debootstrap.log" 2>&1 \
      || { tail -20 "$CTR_WORK/base/debootstrap.log" >&2; ctr_die "debootstrap failed"; }
    # What python:3.11-slim also leaves out: package caches and lists.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -cf "$rootfs_tar.tmp" . && mv "$rootfs_tar.tmp" "$rootfs_tar"
    rm -rf "$rootfs"
  fi
  ctr_log "importing the stand-in base"
  docker import "$rootfs_tar" localhost/rnnserve-stand-in/debian:bookworm >/dev/null
  rm -rf "$ctx" && mkdir -p "$ctx/certs"
  cp /usr/local/share/ca-certificates/*.crt "$ctx/certs/" 2>/dev/null || true
  cat >"$ctx/Dockerfile" <<EOF
FROM localhost/rnnserve-stand-in/debian:bookworm
COPY certs/ /usr/local/share/ca-certificates/
RUN update-ca-certificates >/dev/null && ln -sf /usr/bin/python3 /usr/local/bin/python
ENV LANG=C.UTF-8 \\
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \\
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
LABEL rnnserve.stand-in.key="$key"
EOF
  DOCKER_BUILDKIT=0 docker build -q -t "$CTR_BASE_IMAGE" "$ctx" >/dev/null \
    || ctr_die "building the stand-in base image failed"
  ctr_log "stand-in base built: $CTR_BASE_IMAGE"
}
