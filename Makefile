.PHONY: setup serve test check bench
setup:
	bash scripts/setup.sh
serve:
	bash scripts/serve.sh
test:
	bash scripts/test.sh
check: setup
	.venv/bin/ruff check src tests
	.venv/bin/ruff format --check src tests
	.venv/bin/mypy src
bench:
	bash scripts/bench.sh
