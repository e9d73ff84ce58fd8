# flotilla — the two commands a fresh machine needs: `make demo`, `make test`.
# Both install missing system packages first (tools/install-deps.sh).

# Keep cargo's build output outside the work tree so fresh clones reuse it.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/flotilla/target
CARGO ?= cargo
DEMO_ARGS ?=

.PHONY: all deps test fmt clippy unit demo bench clean

all: test

deps:
	@tools/install-deps.sh

## test: formatting, lints (warnings are errors) and every test of the workspace.
test: deps
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) test --workspace

fmt:
	$(CARGO) fmt --all

clippy: deps
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit: deps
	$(CARGO) test --workspace

## demo: the main job — an embedded 3-store cluster under a mixed workload.
demo: deps
	$(CARGO) run --release -p flotilla-tools --bin flotilla -- demo $(DEMO_ARGS)

## bench: every criterion bench (release build; slow the first time).
bench: deps
	$(CARGO) bench -p flotilla-benches

clean:
	$(CARGO) clean
