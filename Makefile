# The two commands: `make demo` and `make test`. Both run the idempotent set-up first.
CARGO ?= cargo

.PHONY: setup demo test lint build bench clean-deps

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

build:
	$(CARGO) build --release

## Benchmarks (slow; numbers go to docs/BENCHMARKS.md).
bench: setup
	$(CARGO) bench --bench ingest
	$(CARGO) bench --bench detect
	$(CARGO) bench --bench store
	$(CARGO) bench --bench mqtt

clean-deps:
	rm -rf .deps
