#!/bin/sh
# The image's entrypoint: runs `rnnserve "$@"`, making sure that `rnnserve serve` signs its session
# snapshots with a secret that lasts as long as the snapshots do.
#
# - A secret the operator gives is used as is: RNNSERVE_SNAPSHOT_SECRET_FILE naming a non-empty
#   file (compose mounts one from `secrets:` at /run/secrets/rnnserve_snapshot_secret), or
#   RNNSERVE_SNAPSHOT_SECRET. A file that is named but missing stops the server with its reason.
# - None given (the variable unset, or naming an empty file: compose's default secret source is
#   /dev/null): a random secret is generated at the first start into the snapshot volume,
#   $RNNSERVE_SNAPSHOT_DIR/.snapshot-secret (mode 0600, the server's user), and every later start
#   reuses it, so `docker restart` restores every session. Nothing secret is in the image.
set -eu

generated_secret() {
  dir="$1"
  secret="$dir/.snapshot-secret"
  mkdir "$dir" 2>/dev/null || true # as the server does: the directory, never its parents
  if [ ! -s "$secret" ]; then
    tmp="$secret.tmp.$$"
    # A subshell: the umask applies to the secret only, not to the server started below.
    if ! (umask 077 && python -c 'import secrets; print(secrets.token_hex(32))' >"$tmp") \
      || ! mv "$tmp" "$secret"; then
      rm -f "$tmp" 2>/dev/null || true
      echo "rnnserve: cannot write a snapshot signing secret into $dir; mount a writable volume" \
        "there, or give your own with RNNSERVE_SNAPSHOT_SECRET_FILE" >&2
      exit 1
    fi
    echo "rnnserve: generated a snapshot signing secret in $secret; it signs the sessions saved" \
      "in this volume (give your own with RNNSERVE_SNAPSHOT_SECRET_FILE)" >&2
  fi
  echo "$secret"
}

if [ "${1:-}" = "serve" ] && [ -z "${RNNSERVE_SNAPSHOT_SECRET:-}" ] \
  && [ -n "${RNNSERVE_SNAPSHOT_DIR:-}" ]; then
  given="${RNNSERVE_SNAPSHOT_SECRET_FILE:-}"
  if [ -z "$given" ] || { [ -e "$given" ] && [ ! -s "$given" ]; }; then
    [ -z "$given" ] || echo "rnnserve: no snapshot secret given ($given is empty)" >&2
    RNNSERVE_SNAPSHOT_SECRET_FILE="$(generated_secret "$RNNSERVE_SNAPSHOT_DIR")"
    export RNNSERVE_SNAPSHOT_SECRET_FILE
  fi
fi
exec rnnserve "$@"
