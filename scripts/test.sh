#!/bin/sh
# Quick start, step 2: every test (unit, property, simulation, cluster).
# One build profile only (release): RocksDB and raft dominate build time.
set -e
cd "$(dirname "$0")/.."
./scripts/deps.sh
# Formatting is part of the build's contract (skipped where rustfmt is absent).
if cargo fmt --version >/dev/null 2>&1; then cargo fmt --all -- --check; fi
cargo build --release -p sparefs-tools
exec cargo test --release --workspace -- --test-threads=2 "$@"
