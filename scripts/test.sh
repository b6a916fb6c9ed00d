#!/usr/bin/env bash
# Runs the whole test suite (the README's test command calls this through `make test`).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not slow"`.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}

"$VENV/bin/python" scripts/gen_proto.py --check
set +e
"$VENV/bin/pytest" -ra --durations=15 "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  # pytest's "no tests collected" is a broken suite here, never a pass
  echo "pytest collected no tests (exit 5): treating as failure" >&2
  exit 1
fi
exit "$rc"
