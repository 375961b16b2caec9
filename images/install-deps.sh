#!/usr/bin/env bash
# Installs the Debian packages that the test guest, the tests, the demo and the lab need, if any
# are missing (as root, or through sudo).
set -euo pipefail
SUDO=
[ "$(id -u)" = 0 ] || SUDO=sudo
# g++: libFuzzer (fuzz/run.sh) is C++. prometheus: promtool and a real server for
# tests/metrics.rs; libvirt (and xmllint for virt-xml-validate) for tests/libvirt.rs. Cluster mode
# (`--features cluster`): protoc and the well-known protos to build etcd-client, and a real etcd
# (3.4) with etcdctl for the cluster tests; iproute2 and nftables for their network lab; openssl
# for the certificates of tests/cluster_tls.rs. libiscsi-bin (iscsi-test-cu, iscsi-ls) for the
# iSCSI target's tests/iscsi_conformance.rs, and tgt, scored beside it there; iscsi-inq and
# iscsi-ls with CHAP for tests/iscsi_chap.rs. qemu-block-extra: QEMU 7.2's libiscsi block driver
# (`-drive driver=iscsi`), for the guest on iSCSI of tests/e2e_iscsi_guest.rs. qemu-utils
# (qemu-img) for the cluster guests' root overlays that a live migration's two QEMUs share
# (tests/e2e_pacemaker.rs).
packages=(qemu-system-x86 busybox-static sg3-utils cpio kmod gcc g++ libc6-dev socat prometheus
          libvirt-daemon-system libvirt-clients libvirt-daemon-driver-qemu libxml2-utils
          protobuf-compiler libprotobuf-dev etcd-server etcd-client iproute2 nftables
          openssl libiscsi-bin tgt qemu-block-extra qemu-utils)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "install-deps: installing ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
