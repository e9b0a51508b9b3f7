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
# --inexact keeps uv itself (installed above) in the venv.
.venv/bin/uv sync --quiet --frozen --all-extras --inexact
