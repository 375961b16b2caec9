#!/usr/bin/env bash
# The cluster demo, on a fresh Debian 12 machine: seed flow 1 (failover) played by a real Pacemaker
# cluster. Installs QEMU and the packages the guests need, builds the daemon, the small guest's
# kernel and the Debian cluster guest (pacemaker, corosync, crmsh, fence-agents, resource-agents,
# unmodified), then runs tests/e2e_pacemaker.rs: three guests on one image, stonith by fence_scsi
# through sharedisk, an ext4 file system and an application that writes acknowledged records;
# node1's QEMU is killed while it writes, the cluster fences it and fails over to node2; the
# records are checked from the image; node1 comes back, fenced until Pacemaker unfences it.
#
# One line per step with ✔, or ✘ and the reason, then the timeline (kill, fence, file system up
# on node2, first new record). Exits non-zero on any deviation. The guests' consoles and every
# command go to a log file (named at the start). SHAREDISK_QEMU names the QEMU binary (default:
# qemu-system-x86_64 on the PATH); SHAREDISK_ACCEL=kvm|tcg forces the accelerator.
set -euo pipefail
cd "$(dirname "$0")/.."

images/install-deps.sh
images/build-guest.sh >/dev/null
echo "cluster-demo: building the cluster guest (the first time: a few minutes)..."
images/build-cluster-guest.sh
echo "cluster-demo: building sharedisk and the flow (release)..."
cargo build --release --quiet --test e2e_pacemaker

log=$(mktemp -t sharedisk-cluster-demo.XXXXXX)
echo "sharedisk cluster demo: seed flow 1 with Pacemaker, corosync and fence_scsi on one shared image"
echo "  QEMU: ${SHAREDISK_QEMU:-qemu-system-x86_64} ($("${SHAREDISK_QEMU:-qemu-system-x86_64}" --version | head -n1))"
echo "  consoles and commands: $log"
set +e
cargo test --release --quiet --test e2e_pacemaker -- --nocapture 2>&1 | tee "$log" | awk '
    /^\[pacemaker\] / { sub(/^\[pacemaker\] /, ""); print "  " $0; fflush(); next }
    panic { print "  ✘ " $0; fflush(); panic = 0; next }
    /panicked at/ { panic = 1 }'
rc=${PIPESTATUS[0]}
set -e
if [ "$rc" != 0 ]; then
    echo "cluster-demo: a step did not behave as the seed says (exit $rc); the whole story is in $log"
    exit 1
fi
echo "cluster-demo: every step behaved as the seed says"
