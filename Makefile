# The two commands: `make demo` and `make test`. Both run the idempotent set-up first.
CARGO ?= cargo

.PHONY: setup demo test lint build deb test-package bench bench-capacity clean-deps

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

## The Debian package: target/debian/kinderwatch_<version>_amd64.deb (cargo-deb, installed on first use).
deb: setup
	scripts/deb.sh

## Build the package, install it into a fresh Debian 12 root, lint it, run it, upgrade it (root; slow).
test-package: setup
	scripts/test-package.sh

## Benchmarks (slow; numbers go to docs/BENCHMARKS.md).
bench: setup
	$(CARGO) bench --bench ingest
	$(CARGO) bench --bench detect
	$(CARGO) bench --bench preprocess
	$(CARGO) bench --bench store
	$(CARGO) bench --bench mqtt
	$(CARGO) bench --bench capacity
	$(CARGO) bench --bench city

## N busy + M still cameras through the whole daemon (BENCH_BASELINE=1 adds the Python loop).
bench-capacity: setup
	$(CARGO) bench --bench capacity
	$(CARGO) bench --bench city

clean-deps:
	rm -rf .deps
