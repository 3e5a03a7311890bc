#!/usr/bin/env bash
# The test command: sets up (scripts/bootstrap.sh), then runs the C core's own
# tests and the Python suite. Both backends are exercised: backend-level and
# vector tests are parametrized over native and python in one run, and the
# suite is run a second time with NHLINK_IMPORT_POLICY=python so every CLI path
# is also proven on the pure-Python backend.
#
#   scripts/test.sh                 # everything
#   scripts/test.sh -k vectors      # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh

echo "== C core tests"
make -s -C tests/native check

echo "== pytest (native backend required)"
NHLINK_REQUIRE_NATIVE=1 .venv/bin/python -m pytest -q "$@"

echo "== pytest (python backend)"
NHLINK_IMPORT_POLICY=python .venv/bin/python -m pytest -q "$@"
