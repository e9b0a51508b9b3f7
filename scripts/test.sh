#!/usr/bin/env bash
# Set up everything the tests need, run the gates (scripts/check.sh), then the whole suite (both
# backends, browser tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/services.sh
# The portal's browser tests drive Debian's Chromium (Playwright never downloads a browser here).
command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
  || echo "warning: could not install chromium: the browser tests skip (and fail with CI=true)" >&2
# The README's walkthrough (tests/test_readme_walkthrough.py) uses curl and jq, as a reader would.
for tool in curl jq; do
  command -v "$tool" >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$tool") \
    || echo "warning: could not install $tool: the README walkthrough test fails" >&2
done
# The OIDC tests run a real OpenID provider on Node.js (tests/oidc_provider/, npm ci'd by setup.sh).
if ! command -v npm >/dev/null; then
  # (NodeSource's nodejs brings npm; Debian's needs its npm package besides.)
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs \
    && (command -v npm >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm) \
    && npm ci --prefix tests/oidc_provider --no-audit --no-fund --silent) \
    || echo "warning: could not install Node.js: the OpenID provider tests skip (and fail with CI=true)" >&2
fi
bash scripts/check.sh
# The suite waits on servers more than it computes: two pytest-xdist workers, one per core of the
# CI machine (VIOPAY_TEST_WORKERS=0 runs everything in one process; conftest.py says who runs what).
exec .venv/bin/pytest -n "${VIOPAY_TEST_WORKERS:-2}" "$@"
