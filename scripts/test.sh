#!/usr/bin/env bash
# Set up everything the tests need and run the whole suite (both backends, browser tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/services.sh
exec .venv/bin/pytest "$@"
