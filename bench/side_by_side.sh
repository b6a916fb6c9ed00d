#!/usr/bin/env bash
# rnnserve beside its floor and its peers, in one run on one machine: the echo floor
# (bench/echo_server.py: the same proto, no model), rnnserve serving the peers' LSTM shape (the
# 2 x 256 random-weight twin from bench/model.py, vocabulary 100), Triton 2.51 (`lstm_direct_i2`:
# Python backend + onnxruntime, 2 instances) and TorchServe 0.12 (`lstm_w1_d5`). The same
# closed-loop load on each: 1 stream x 200 tokens, 64 and 256 streams x 100 tokens, one token per
# message, one message in flight per stream. Repetitions alternate the servers.
#
#   PEERS=../shared/peers REPS=3 bash bench/side_by_side.sh      # ~8 min; then the table:
#   python3 $PEERS/table.py $OUT
#
# The peers are set up by their own scripts ($PEERS/triton/setup.sh, $PEERS/torchserve/setup.sh);
# nothing here installs anything. rnnserve's own .venv runs the echo server, rnnserve and the
# load generator (rnnserve-load), whose JSON results table.py reads.
set -uo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
PEERS="$(cd "${PEERS:?set PEERS to the peers folder (shared/peers)}" && pwd)"
REPS="${REPS:-3}"
OUT="${OUT:-/tmp/side-by-side-$(date +%Y%m%d-%H%M%S)}"
PY="$ROOT/.venv/bin/python"
LOAD="$ROOT/.venv/bin/rnnserve-load"
REPOSITORY="${REPOSITORY:-$OUT/repository}"
mkdir -p "$OUT"

port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_ready() {  # $1 target: the gRPC port answers within 60 s
  "$PY" -c 'import sys, grpc
with grpc.insecure_channel(sys.argv[1]) as c: grpc.channel_ready_future(c).result(timeout=60)' "$1"
}
loads() {  # $1 name, $2 target
  for spec in 1:200 64:100 256:100; do
    c=${spec%%:*}; n=${spec##*:}
    "$LOAD" --target "$2" --model char-lstm -c "$c" -n "$n" --warmup 10 --no-progress \
      --json "$OUT/$1.c$c.r$rep.json" >/dev/null 2>>"$OUT/$1.err" || echo "load $1 c=$c failed"
    sleep 1
  done
}
stop() {  # $1 pid: SIGTERM, then wait for it
  kill -TERM "$1" 2>/dev/null; wait "$1" 2>/dev/null
}

[ -f "$REPOSITORY/char-lstm/model.json" ] || "$PY" "$HERE/model.py" "$REPOSITORY"
echo "start $(date -Is) load $(cat /proc/loadavg) cores $(nproc)" | tee "$OUT/env.txt"
for rep in $(seq 1 "$REPS"); do
  P=$(port)
  "$PY" "$HERE/echo_server.py" --port "$P" --logits 100 >"$OUT/echo.log" 2>&1 & e=$!
  wait_ready "127.0.0.1:$P" && loads echo "127.0.0.1:$P"; stop $e
  P=$(port)
  "$ROOT/.venv/bin/rnnserve" serve --port "$P" --metrics-port -1 \
    --model-repository "$REPOSITORY" --log-level warning >"$OUT/rnnserve.log" 2>&1 & s=$!
  wait_ready "127.0.0.1:$P" && loads rnnserve "127.0.0.1:$P"; stop $s
  CONFIGS="lstm_direct_i2:stream" PHASES="single,64,256" REPS=1 OUT="$OUT/triton-r$rep" \
    bash "$PEERS/triton/run_bench.sh" >"$OUT/triton-r$rep.log" 2>&1
  CONFIGS="lstm_w1_d5:quiet:1,64" REPS=1 OUT="$OUT/ts-r$rep" \
    bash "$PEERS/torchserve/run_bench.sh" >"$OUT/ts-r$rep.log" 2>&1
  echo "rep $rep done $(date -Is) load $(cat /proc/loadavg)" | tee -a "$OUT/env.txt"
done
echo "results in $OUT: python3 $PEERS/table.py $OUT"
