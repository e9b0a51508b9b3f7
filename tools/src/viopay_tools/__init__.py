"""Viopay tools: ``viopay-tools demo`` (the whole flow against a server, with timings) and
``viopay-tools bench`` (the benchmark, docs/benchmarks.md). Not part of the server's wheel."""
