#!/bin/sh
# Quick start, step 2: every test (unit, property, simulation, cluster).
# One build profile only (release): RocksDB and raft dominate build time.
set -e
cd "$(dirname "$0")/.."
./scripts/deps.sh
# Formatting is part of the build's contract (skipped where rustfmt is absent).
if cargo fmt --version >/dev/null 2>&1; then cargo fmt --all -- --check; fi
# Lints, the workspace's own (unwrap_used, ...) included, fail the run.
cargo clippy --version >/dev/null 2>&1 || rustup component add clippy
cargo clippy --release --workspace --all-targets -- -D warnings
cargo build --release -p sparefs-tools
exec cargo test --release --workspace -- --test-threads=2 "$@"
