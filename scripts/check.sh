#!/usr/bin/env bash
# The gates: lint, format and types. Run by `make check`, by pre-commit, and by .ci/run before
# the tests (a red gate stops the run before the suite starts).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "gates: ruff check, ruff format --check, mypy --strict on src, sdk, tools, scripts and their tests" >&2
.venv/bin/ruff check src tests sdk tools scripts
.venv/bin/ruff format --check src tests sdk tools scripts
.venv/bin/mypy src sdk/src tools/src tests tools/tests scripts
# sdk/tests names its modules from its own folder (conftest, device_fake), as tests/ does: a run of
# its own, or mypy would see two modules called conftest.
MYPYPATH=sdk/tests .venv/bin/mypy sdk/tests
