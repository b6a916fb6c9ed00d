#!/usr/bin/env bash
# Triton's own load tester, perf_analyzer, against rnnserve's KServe v2 front door: gRPC,
# --streaming (one ModelStreamInfer stream per PA context), sequences of 100 one-token requests
# (token id 0), concurrency 1, 64 and 256 by default. PA reads rnnserve's ModelConfig, sees a
# sequence model and sends sequence_id / sequence_start / sequence_end itself.
#
#   bash bench/perf_analyzer.sh                  # -> $OUT/rnnserve.c<N>.{csv,txt} and a table
#   CONC="1 8 64" REPS=3 bash bench/perf_analyzer.sh
#   TRITON=/path/to/peers/triton bash bench/perf_analyzer.sh   # the same PA runs against Triton
#                                                               # (its run_pa.sh), in the same run
#
# perf_analyzer 2.41.1 comes from the tritonclient 2.41.1 manylinux wheel (the last whose binary
# runs on glibc 2.36), libb64 from Debian's libb64-0d and the CUDA runtime it links from PyPI's
# nvidia-cuda-runtime-cu12 (only the library is loaded; no GPU is used). Everything lands in
# $WORK; nothing is installed system-wide. The model is the benchmark's char-lstm shape with
# vocabulary 100 (bench/model.py), the shape of the Triton peer's model.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
PY="${PY:-$ROOT/.venv/bin/python}"
WORK="${WORK:-/tmp/rnnserve-pa}"
OUT="${OUT:-$WORK/results/$(date +%Y%m%d-%H%M%S)}"
CONC="${CONC:-1 64 256}"
REPS="${REPS:-1}"
PORT="${PORT:-18201}"
mkdir -p "$WORK/dl" "$WORK/pa/lib" "$OUT"

# 1. perf_analyzer
if [ ! -x "$WORK/pa/perf_analyzer" ]; then
  "$PY" -m pip download -q --no-deps --only-binary=:all: --platform manylinux1_x86_64 \
    -d "$WORK/dl" tritonclient==2.41.1
  "$PY" - "$WORK"/dl/tritonclient-2.41.1-*manylinux1_x86_64.whl "$WORK/pa/perf_analyzer" <<'EOF'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel:
    name = next(n for n in wheel.namelist() if n.endswith("/bin/perf_analyzer"))
    open(sys.argv[2], "wb").write(wheel.read(name))
EOF
  chmod +x "$WORK/pa/perf_analyzer"
fi
if [ ! -e "$WORK/pa/lib/libb64.so.0d" ]; then
  (cd "$WORK/dl" && { apt-get download libb64-0d >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get download libb64-0d; }; })
  dpkg -x "$WORK"/dl/libb64-0d_*.deb "$WORK/pa/root"
  cp "$WORK/pa/root/usr/lib/x86_64-linux-gnu/libb64.so.0d" "$WORK/pa/lib/"
fi
if [ ! -d "$WORK/cudart" ]; then
  "$PY" -m pip install -q --target "$WORK/cudart" nvidia-cuda-runtime-cu12
fi
CUDART="$(dirname "$(find "$WORK/cudart" -name 'libcudart.so.*' | head -1)")"
export LD_LIBRARY_PATH="$WORK/pa/lib:$CUDART${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
"$WORK/pa/perf_analyzer" --version 2>&1 | grep -qi "perf analyzer\|usage" \
  || { echo "perf_analyzer does not run" >&2; exit 1; }

# 2. the model and the server
[ -f "$WORK/repository/char-lstm/model.json" ] || "$PY" "$HERE/model.py" "$WORK/repository"
"$PY" -m rnnserve.server.cli serve --model-repository "$WORK/repository" --models char-lstm \
  --host 127.0.0.1 --port "$PORT" --metrics-port -1 --log-level warning \
  --max-sessions 4096 >"$OUT/rnnserve.log" 2>&1 &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  "$PY" -m rnnserve.server.cli healthcheck --port "$PORT" >/dev/null 2>&1 && break
  sleep 0.2
done

# 3. perf_analyzer at each concurrency
echo "loadavg at start: $(cat /proc/loadavg)" | tee "$OUT/env.txt"
for rep in $(seq 1 "$REPS"); do
  for c in $CONC; do
    base="$OUT/rnnserve.c$c.r$rep"
    echo "== rnnserve rep $rep concurrency $c (loadavg $(cut -d' ' -f1-3 /proc/loadavg))"
    if ! timeout 300 "$WORK/pa/perf_analyzer" -m char-lstm -u "127.0.0.1:$PORT" -i grpc \
        --streaming --sequence-length 100 --sequence-length-variation 0 \
        --sequence-id-range 1:1000000 --input-data zero --shape tokens:1,1 \
        --concurrency-range "$c:$c" -p 3000 -s 25 --max-trials 10 \
        -f "$base.csv" --verbose-csv >"$base.txt" 2>&1; then
      echo "   perf_analyzer failed: $(tail -3 "$base.txt")" | tee "$base.FAILED"
    fi
    grep -E "Throughput|p50 latency|p99 latency|Avg request latency|error" "$base.txt" \
      | sed 's/^/   /' || true
    kill -0 "$SERVER" 2>/dev/null || { echo "!! rnnserve exited" | tee -a "$base.FAILED"; exit 1; }
  done
done

kill "$SERVER"; wait "$SERVER" 2>/dev/null || true  # idle, but out of Triton's way

# 4. Triton beside it, same PA, same shape (optional)
if [ -n "${TRITON:-}" ]; then
  OUT="$OUT/triton" REPS="$REPS" CONC="$CONC" PA_MODELS="${PA_MODELS:-lstm_direct_i2}" \
    bash "$TRITON/run_pa.sh" || echo "Triton's run_pa.sh failed (see $OUT/triton)"
fi
"$PY" "$HERE/pa_table.py" "$OUT" | tee "$OUT/table.md"
echo "results: $OUT"
