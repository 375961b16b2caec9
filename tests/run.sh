#!/usr/bin/env bash
# Runs every test of sharedisk, on a fresh Debian 12 machine too: installs the packages the tests
# need (QEMU, busybox, sg3-utils, ...) and QEMU 10.0 from backports beside the system's 7.2,
# builds the test guest and the cluster guest (Debian 12 with the cluster stack), then runs the
# format and lint checks, every fuzz target for 30 s (fuzz/run.sh), the whole cargo test suite
# (unit, libblkio, raw-virtqueue, fuzz regression, cluster-mode with a real etcd, and QEMU guest
# tests; built with `--features cluster`, and linted without it too) on the system QEMU, and
# the QEMU guest tests (tests/guest_*.rs, tests/e2e_*.rs) again on QEMU 10.0. SHAREDISK_QEMU
# names the QEMU of a pass.
# Tests that need QEMU fail, never skip, when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

images/install-deps.sh
qemu10=$(images/install-qemu10.sh)

echo "run: building the test guest"
images/build-guest.sh
echo "run: building the cluster guest (Debian 12 with pacemaker, corosync, fence-agents, multipath-tools)"
images/build-cluster-guest.sh

echo "run: cargo fmt --check"
cargo fmt --check
echo "run: cargo clippy, single-host build and with --features cluster"
cargo clippy --all-targets -- -D warnings
cargo clippy --all-targets --features cluster -- -D warnings
echo "run: fuzzing, 30 s per target"
fuzz/run.sh 30
# libtest keeps a passing test's output to itself and prints a failing one's: every guest command
# and its result, prefixed with the guest's name.
qemu7=$(command -v qemu-system-x86_64)
echo "run: cargo test, guests on $qemu7 ($("$qemu7" --version | head -n1))"
SHAREDISK_QEMU=$qemu7 cargo test --features cluster --lib --bins --tests

guest_tests=()
for t in tests/guest_*.rs tests/e2e_*.rs; do
    guest_tests+=(--test "$(basename "$t" .rs)")
done
echo "run: the guest tests again, on $qemu10 ($("$qemu10" --version | head -n1))"
SHAREDISK_QEMU=$qemu10 cargo test --features cluster "${guest_tests[@]}"
