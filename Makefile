# The two commands: `make demo` and `make test`. Both run the idempotent set-up first.
CARGO ?= cargo

.PHONY: setup demo test lint build bench bench-capacity clean-deps

setup:
	scripts/setup.sh

## Run the daemon on the sample camera with the built-in demo config.
demo: setup
	$(CARGO) build --release --bin kinderwatch --example sample_camera
	scripts/demo.sh

## Formatting, lints and the whole test suite (what CI runs).
test: setup lint
	scripts/test.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) clippy --all-targets --features failpoints -- -D warnings

build:
	$(CARGO) build --release

## Benchmarks (slow; numbers go to docs/BENCHMARKS.md).
bench: setup
	$(CARGO) bench --bench ingest
	$(CARGO) bench --bench detect
	$(CARGO) bench --bench preprocess
	$(CARGO) bench --bench store
	$(CARGO) bench --bench mqtt
	$(CARGO) bench --bench capacity

## N busy + M still cameras through the whole daemon (BENCH_BASELINE=1 adds the Python loop).
bench-capacity: setup
	$(CARGO) bench --bench capacity

clean-deps:
	rm -rf .deps
