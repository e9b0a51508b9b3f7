#!/usr/bin/env bash
# Benchmarks (docs/benchmarks.md): set up .venv (the workspace with tools/, whose bench extra has matplotlib and py-spy), start
# PostgreSQL and Redis if they are down, install wrk (the load generator's cross-check) if it is
# missing, then run `viopay-tools bench` with the arguments given (e.g. --quick, --profile).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/services.sh
if ! command -v wrk >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "installing wrk" >&2
    { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk \
      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; }; } >/dev/null 2>&1 \
      || echo "wrk could not be installed: the wrk cross-check is skipped" >&2
  else
    echo "wrk not installed (apt-get install wrk): the wrk cross-check is skipped" >&2
  fi
fi
exec .venv/bin/viopay-tools bench "$@"
