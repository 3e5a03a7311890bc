#!/usr/bin/env bash
# The storms of issue 8, from one command (loopback only, bounded):
#
#   1. reconnect storm: STORM_DEVICES simulated devices (default 300) connect to
#      a local hub, the hub restarts (down STORM_DOWNTIME s, default 5), and the
#      distribution of reconnect latencies is reported and checked against the
#      spec 1.4 backoff (nhlink simulate);
#   2. fault storm: STORM_UPDATES updates in a row (default 200) with seeded
#      drops, stalls, slow links, HTTP errors and hub restarts; every outcome,
#      the image's active slot, fds, threads and the RSS trend are checked.
#
#   scripts/storm.sh                       # full run, reports in build/storm/
#   STORM_SEED=3 STORM_DEVICES=30 STORM_DOWNTIME=2 STORM_UPDATES=20 scripts/storm.sh
#                                          # the short version CI runs (.ci/run)
#   STORM_TRACEMALLOC=1 scripts/storm.sh   # also list the allocation sites that grew
#                                          # (RSS then includes tracemalloc's own traces)
#
# Exit status 0 when both storms held. PYTHON picks the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT="${STORM_OUT:-build/storm}"
mkdir -p "$OUT"
status=0

echo "== reconnect storm: ${STORM_DEVICES:-300} devices, hub down ${STORM_DOWNTIME:-5} s"
"$PYTHON" -c 'import sys; from nhlink.cli.simulate import main; sys.exit(main(sys.argv[1:]))' \
    --count "${STORM_DEVICES:-300}" \
    --restart-hub-after 1 \
    --restart-downtime "${STORM_DOWNTIME:-5}" \
    --seed "${STORM_SEED:-300}" \
    --json "$OUT/reconnect.json" || status=1

echo "== fault storm: ${STORM_UPDATES:-200} updates"
"$PYTHON" -m tests.storm.fault_storm \
    --updates "${STORM_UPDATES:-200}" \
    --seed "${STORM_SEED:-8}" \
    --json "$OUT/fault.json" ${STORM_TRACEMALLOC:+--tracemalloc} || status=1

echo "== reports in $OUT/ (exit $status)"
exit "$status"
