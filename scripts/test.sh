#!/usr/bin/env bash
# Runs the whole suite. pytest's exit 5 (no tests collected) is a failure here, not a pass.
set -uo pipefail
VENV=${1:-.venv}
cd "$(dirname "$0")/.."
export FICUS_CORPUS=${FICUS_CORPUS:-$(cd .. && pwd)/shared/corpus}
# Two processes (FICUS_TEST_WORKERS=1: one), each test file on one of them: most tests wait on
# real servers and processes, so two halves the wall time on this 2-core machine.
WORKERS=${FICUS_TEST_WORKERS:-2}
PARALLEL=()
[ "$WORKERS" -gt 1 ] && PARALLEL=(-n "$WORKERS" --dist loadfile)
"$VENV/bin/python" -m pytest -q -p no:cacheprovider --timeout=180 --durations=15 "${PARALLEL[@]}" tests
rc=$?
if [ $rc -eq 5 ]; then echo "test: pytest collected no tests - failing"; exit 1; fi
exit $rc
