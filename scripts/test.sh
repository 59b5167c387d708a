#!/bin/sh
# Quick start, step 2: every test (unit, property, simulation, cluster).
# One build profile only (release): RocksDB and raft dominate build time.
set -e
cd "$(dirname "$0")/.."
./scripts/deps.sh
cargo build --release -p sparefs-tools
exec cargo test --release --workspace -- --test-threads=2 "$@"
