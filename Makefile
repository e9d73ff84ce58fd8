# flotilla — the two commands a fresh machine needs: `make demo`, `make test`
# (and `make load`, the 100,000-region load tool).
# Both install missing system packages first (tools/install-deps.sh).

# Keep cargo's build output outside the work tree so fresh clones reuse it.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/flotilla/target
CARGO ?= cargo

# RocksDB's C++ is ~12 minutes of every fresh build, and cargo rebuilds it
# whenever the feature set of its build dependencies changes with the package
# selection (test vs bench vs demo). ccache (installed by tools/install-deps.sh)
# makes those rebuilds cache hits; cc-rs accepts a wrapper in CC/CXX. These are
# expanded when a recipe runs, so they see a ccache the deps step just
# installed. A CC/CXX from the environment or the command line wins.
ccache_or = $(if $(shell command -v ccache 2>/dev/null),ccache $(1),$(1))
ifeq ($(origin CC),default)
export CC = $(call ccache_or,cc)
endif
ifeq ($(origin CXX),default)
export CXX = $(call ccache_or,c++)
endif
DEMO_ARGS ?=
LOAD_ARGS ?=

.PHONY: all deps test fmt clippy unit demo load bench clean

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

## load: 100,000 regions on 3 in-process stores through election, idle,
## uniform and hot-spot writes, the loss of a store and its restart; one
## table per phase, a CSV and a PNG (e.g. LOAD_ARGS="--regions 1000 --phase-duration 3s").
load: deps
	$(CARGO) run --release -p flotilla-tools --bin flotilla -- load $(LOAD_ARGS)

## bench: every criterion bench (release build; slow the first time).
bench: deps
	$(CARGO) bench -p flotilla-benches

clean:
	$(CARGO) clean
