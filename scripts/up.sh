#!/bin/sh
# Quick start, step 1: install what is missing, build, run `sparefs up`.
set -e
cd "$(dirname "$0")/.."
./scripts/deps.sh
cargo build --release -p sparefs-tools
exec ./target/release/sparefs up "$@"
