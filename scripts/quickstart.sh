#!/usr/bin/env bash
# `make serve`: start the server on the shipped models, show a client streaming generated text from
# it, then keep serving in the foreground until Ctrl-C (which stops it gracefully).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
HOST=${RNNSERVE_HOST:-127.0.0.1}
PORT=${RNNSERVE_PORT:-50051}
MODEL=${DEMO_MODEL:-char-lstm}

if [ ! -f "models/repository/$MODEL/model.json" ]; then
  echo "no shipped model '$MODEL' in models/repository; run 'make models' (needs the [train] extra)" >&2
  exit 1
fi

"$VENV/bin/rnnserve" serve --host "$HOST" --port "$PORT" &
server=$!
trap 'kill -TERM "$server" 2>/dev/null; wait "$server" 2>/dev/null' EXIT INT TERM

for _ in $(seq 1 120); do
  if "$VENV/bin/rnnserve" healthcheck --host "$HOST" --port "$PORT" --timeout 1 >/dev/null 2>&1; then
    break
  fi
  kill -0 "$server" 2>/dev/null || { echo "server exited during start" >&2; exit 1; }
  sleep 0.5
done

echo
echo "== server is SERVING on $HOST:$PORT; a client streams generated text from $MODEL:"
"$VENV/bin/rnnserve-client" --target "$HOST:$PORT" generate "$MODEL" "ROMEO:" \
  --max-tokens 300 --temperature 0.8 --seed 7
echo
echo "== still serving on $HOST:$PORT (Ctrl-C stops it gracefully)"
wait "$server"
