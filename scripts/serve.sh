#!/usr/bin/env bash
# Set up and start the server. With no configuration it runs on the embedded default
# (SQLite under ./var, in-process cache, embedded token issuer, sandbox processor).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/viopay serve "$@"
