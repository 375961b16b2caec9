#!/usr/bin/env bash
# The sharedisk demo, on a fresh Debian 12 machine: installs QEMU and the guest's packages, builds
# the daemon and a tiny test guest, starts the daemon on a fresh image and plays the seeds' two
# persistent reservation flows (failover with 2 guests; one writer, many readers with 3 guests),
# one line per step with ✔/✘. Exits non-zero if any step does not behave as the seed says.
# Everything is cleaned up at the end, and on Ctrl-C. SHAREDISK_QEMU names the QEMU binary
# (default: qemu-system-x86_64 on the PATH).
set -euo pipefail
cd "$(dirname "$0")/.."

images/install-deps.sh
images/build-guest.sh >/dev/null
echo "demo: building sharedisk (release)..."
cargo build --release --quiet --test demo

work=$(mktemp -d -t sharedisk-demo.XXXXXX)
cleanup() {
    trap - EXIT INT TERM
    # The demo's QEMUs and daemon share our process group; make sure none outlives us.
    pkill -TERM -f "$work" 2>/dev/null || true
    sleep 0.5
    pkill -KILL -f "$work" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
trap 'echo; echo "demo: interrupted, cleaning up"; exit 130' INT TERM

SHAREDISK_DEMO_DIR=$work cargo test --release --quiet --test demo
