#!/usr/bin/env bash
# Runs every test of sharedisk, on a fresh Debian 12 machine too: installs the packages the tests
# need (QEMU, busybox, sg3-utils, ...), builds the test guest, then runs the format and lint
# checks, every fuzz target for 30 s (fuzz/run.sh) and the whole cargo test suite (unit,
# libblkio, raw-virtqueue, fuzz regression and QEMU guest tests).
# Tests that need QEMU fail, never skip, when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

images/install-deps.sh

echo "run: building the test guest"
images/build-guest.sh

echo "run: cargo fmt --check"
cargo fmt --check
echo "run: cargo clippy"
cargo clippy --all-targets -- -D warnings
echo "run: fuzzing, 30 s per target"
fuzz/run.sh 30
echo "run: cargo test"
# libtest keeps a passing test's output to itself and prints a failing one's: every guest command
# and its result, prefixed with the guest's name.
cargo test --lib --bins --tests
