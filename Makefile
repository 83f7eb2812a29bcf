.PHONY: test demo lint bench
test:          ## install what the tests need, then ruff + import contracts + mypy + pytest
	scripts/test.sh
demo:          ## run the whole loop on the embedded broker (Ctrl-C stops it)
	scripts/demo.sh
bench:         ## print the benchmark figures (see docs/benchmarks.md)
	.venv/bin/python bench/bench_state.py
