#!/usr/bin/env bash
# Set up the project on a fresh machine: a virtualenv in .venv with the locked dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
if [ ! -x .venv/bin/uv ]; then
  .venv/bin/pip install --quiet --disable-pip-version-check "uv==0.13.9"
fi
# --inexact keeps uv itself (installed above) in the venv; --all-packages installs the workspace's
# sdk/ (viopay-device) and tools/ (viopay-tools: demo, bench) beside the server.
.venv/bin/uv sync --quiet --frozen --all-packages --all-extras --inexact
