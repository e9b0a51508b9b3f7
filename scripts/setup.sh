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
# The real OpenID provider of the OIDC tests (tests/oidc_provider/: panva's oidc-provider from
# npm, locked by its package-lock.json). scripts/test.sh installs Node.js when it is missing.
if command -v npm >/dev/null; then
  npm ci --prefix tests/oidc_provider --no-audit --no-fund --silent \
    || echo "warning: npm ci failed in tests/oidc_provider: the OpenID provider tests skip (and fail with CI=true)" >&2
else
  echo "note: npm not found: the OpenID provider tests skip (scripts/test.sh installs Node.js)" >&2
fi
