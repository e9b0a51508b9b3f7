.PHONY: setup serve test check bench
setup:
	bash scripts/setup.sh
serve:
	bash scripts/serve.sh
test:
	bash scripts/test.sh
check: setup
	bash scripts/check.sh
bench:
	bash scripts/bench.sh
