#!/usr/bin/env bash
# The main job on a fresh machine: set up (scripts/bootstrap.sh), then run
# `nhlink demo`, a whole signed A/B update against the built-in local hub.
#   scripts/demo.sh [--dir DIR] [--size MIB]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh >/dev/null
exec .venv/bin/nhlink demo "$@"
