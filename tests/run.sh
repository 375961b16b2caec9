#!/usr/bin/env bash
# Runs every test of sharedisk, on a fresh Debian 12 machine too: installs the packages the tests
# need (QEMU, busybox, sg3-utils, ...) and QEMU 10.0 from backports beside the system's 7.2,
# builds the test guest and the cluster guest (Debian 12 with the cluster stack), then runs the
# format and lint checks (clippy without features and with all of them), checks that the release
# build users run carries no test hooks, runs every fuzz target for 30 s (fuzz/run.sh) and the
# whole cargo test suite, built with `--features cluster,test-hooks` (unit, libblkio,
# raw-virtqueue, fuzz regression, cluster-mode with a real etcd, the Debian package installed in a
# container booted with systemd, and QEMU guest tests).
#
# Two QEMU passes; SHAREDISK_QEMU names the QEMU of a pass:
# - QEMU 7.2 (the system's): the whole suite but the cluster-guest tests. Its guest tests are what
#   differs on 7.2: the basic guest flows (guest_*.rs, e2e_flows), blk restarts and the path
#   without vhost-user-scsi reconnection (e2e_soak, e2e_cluster's daemon restart).
# - QEMU 10.0: the guest tests again (tests/guest_*.rs, tests/e2e_*.rs), and the cluster-guest
#   tests (Pacemaker, fence_scsi, mpathpersist, the cluster end-to-end tests) only here: their
#   7.2 runs took 6 to 7 minutes and exercised nothing 10.0 does not.
# Tests that need QEMU fail, never skip, when it is missing. At the end (and on a failure) the
# script prints what each step took and the total.
set -euo pipefail
cd "$(dirname "$0")/.."

features=cluster,test-hooks
# The tests that boot the cluster guests or play the cluster end-to-end scenarios: QEMU 10.0 only.
cluster_guest_tests=(e2e_pacemaker e2e_fence_scsi e2e_mpathpersist e2e_cluster e2e_cluster_hosts
    e2e_cluster_fence_scsi e2e_iscsi_fence_scsi)

timings=()
started=$SECONDS

# record NAME START: notes that step NAME, begun at START (in $SECONDS), is done.
record() {
    timings+=("$(printf '%5d s  %s' $((SECONDS - $2)) "$1")")
}

# step NAME CMD...: runs CMD, announced as NAME, and records how long it took.
step() {
    local name=$1 t0=$SECONDS
    shift
    echo "run: $name"
    "$@"
    record "$name" "$t0"
}

report() {
    local rc=$?
    echo "run: time per step"
    if ((${#timings[@]})); then
        printf '  %s\n' "${timings[@]}"
    fi
    printf '  %5d s  total%s\n' $((SECONDS - started)) "$([ "$rc" = 0 ] || echo ", failed (exit $rc)")"
}
trap report EXIT

# Fails if the release binary (no features) carries a test hook's environment variable.
release_has_no_test_hooks() {
    if grep -aoE 'SHAREDISK_FAILPOINT|SHAREDISK_TEST_WRITE_DELAY_MS' target/release/sharedisk; then
        echo "run: the release binary contains test hooks (built without --features test-hooks)" >&2
        return 1
    fi
}

step "packages" images/install-deps.sh
# The Debian package's test (tests/package.rs): lintian, systemd-nspawn (systemd-container) to
# boot this machine's root with systemd as init, and cargo-deb (about a minute to build, once).
# Here rather than in images/install-deps.sh, whose contents key the test guest's image.
package_tools() {
    local missing=() sudo=
    [ "$(id -u)" = 0 ] || sudo=sudo
    for p in lintian systemd-container; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if ((${#missing[@]})); then
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
    command -v cargo-deb >/dev/null || cargo install --locked --quiet cargo-deb --version 3.8.0
}
step "the Debian package's tools (lintian, systemd-container, cargo-deb)" package_tools
t0=$SECONDS
echo "run: QEMU 10.0"
qemu10=$(images/install-qemu10.sh)
record "QEMU 10.0" "$t0"
qemu7=$(command -v qemu-system-x86_64)

step "build the test guest" images/build-guest.sh
step "build the cluster guest (Debian 12 with pacemaker, corosync, fence-agents, multipath-tools)" \
    images/build-cluster-guest.sh

step "cargo fmt --check" cargo fmt --check
step "cargo clippy, no features" cargo clippy --all-targets -- -D warnings
step "cargo clippy --features $features" cargo clippy --all-targets --features "$features" -- -D warnings
step "release build, no features" cargo build --release
step "the release binary has no test hooks" release_has_no_test_hooks
# The unit tests of the single-host build (some exist only without `cluster`, e.g. the refusal of
# a [cluster] section by a build without cluster support).
step "unit tests, no features" cargo test --lib
step "fuzzing, 30 s per target" fuzz/run.sh 30

# libtest keeps a passing test's output to itself and prints a failing one's: every guest command
# and its result, prefixed with the guest's name.
pass7=(--lib --bins)
for t in tests/*.rs; do
    name=$(basename "$t" .rs)
    # demo is not a test (`test = false`: it narrates the flows e2e_flows asserts).
    [[ $name == demo || " ${cluster_guest_tests[*]} " == *" $name "* ]] && continue
    pass7+=(--test "$name")
done
step "cargo test on $qemu7 ($("$qemu7" --version | head -n1)), all but the cluster-guest tests" \
    env SHAREDISK_QEMU="$qemu7" cargo test --features "$features" "${pass7[@]}"
# e2e_cluster's daemon restart takes the path without vhost-user-scsi reconnection on 7.2.
step "e2e_cluster's daemon restart on $qemu7" \
    env SHAREDISK_QEMU="$qemu7" cargo test --features "$features" --test e2e_cluster -- \
    --exact daemon_restart_with_guests_running

guest10=()
for t in tests/guest_*.rs tests/e2e_*.rs; do
    name=$(basename "$t" .rs)
    [[ " ${cluster_guest_tests[*]} " == *" $name "* ]] && continue
    guest10+=(--test "$name")
done
step "the guest tests again on $qemu10 ($("$qemu10" --version | head -n1))" \
    env SHAREDISK_QEMU="$qemu10" cargo test --features "$features" "${guest10[@]}"
cluster10=()
for name in "${cluster_guest_tests[@]}"; do
    cluster10+=(--test "$name")
done
step "the cluster-guest tests on $qemu10, once" \
    env SHAREDISK_QEMU="$qemu10" cargo test --features "$features" "${cluster10[@]}"
