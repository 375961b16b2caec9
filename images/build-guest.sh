#!/bin/bash
# Build the sharedisk test-guest kernel + initramfs.
#
# Usage: images/build-guest.sh [CACHE_DIR]
#   CACHE_DIR defaults to ${SHAREDISK_CACHE:-$HOME/.cache/sharedisk}/guest
#
# Outputs (in CACHE_DIR): vmlinuz, initramfs.img (gzip'ed newc cpio), stamp, kernel-version.
#
# Idempotent: a fast no-op when the stamp (a hash of every file under images/) matches and the
# outputs exist.  Set SHAREDISK_GUEST_FORCE=1 to rebuild anyway (e.g. to pick up a newer kernel).
# SHAREDISK_GUEST_KERNEL_PKG=linux-image-X-cloud-amd64 pins the kernel package; by default it is
# the versioned package the metapackage linux-image-cloud-amd64 depends on.
#
# On a fresh Debian machine it installs (apt-get, noninteractive; `apt-get update` only when a
# package cannot be found) busybox-static, sg3-utils, cpio, kmod, gcc, libc6-dev, qemu-system-x86.
# The kernel package is only downloaded (apt-get download) and unpacked with dpkg-deb -x into the
# cache; it is never installed on the host.
#
# Initramfs contents: /init (images/init), busybox-static + applet symlinks, sg3-utils binaries +
# their shared libraries and the dynamic loader, /usr/bin/pr-ioctl (static, from
# images/pr-ioctl.c), and the virtio/SCSI kernel modules (uncompressed, in dependency order,
# listed in /etc/modules.order).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${1:-${SHAREDISK_CACHE:-$HOME/.cache/sharedisk}/guest}
mkdir -p "$CACHE"
CACHE=$(cd "$CACHE" && pwd)

# Modules the guest needs; their dependencies are resolved with modinfo -F depends.
WANT_MODULES="virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk scsi_common scsi_mod virtio_scsi sd_mod sg"

msg() { echo "build-guest: $*" >&2; }
die() { msg "ERROR: $*"; exit 1; }

inputs_hash() {
    (cd "$HERE" && find . -type f ! -name '*~' ! -name '.*' -print0 | LC_ALL=C sort -z |
        xargs -0 sha256sum) | sha256sum | cut -d' ' -f1
}

HASH=$(inputs_hash)
STAMP_WANT="inputs=$HASH kernel_pin=${SHAREDISK_GUEST_KERNEL_PKG:-}"

up_to_date() {
    [ -s "$CACHE/vmlinuz" ] && [ -s "$CACHE/initramfs.img" ] && [ -f "$CACHE/stamp" ] &&
        [ "$(cat "$CACHE/stamp")" = "$STAMP_WANT" ] && command -v qemu-system-x86_64 >/dev/null
}

if [ "${SHAREDISK_GUEST_FORCE:-0}" != 1 ] && up_to_date; then
    exit 0
fi

# Serialise concurrent builders (several test processes may start at once).
exec 9>"$CACHE/.lock"
flock 9
if [ "${SHAREDISK_GUEST_FORCE:-0}" != 1 ] && up_to_date; then
    exit 0
fi

SUDO=
if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || die "not root and sudo is missing: cannot apt-get install"
    SUDO="sudo"
fi

APT_UPDATED=0
apt_update() {
    if [ $APT_UPDATED = 0 ]; then
        msg "apt-get update"
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 || die "apt-get update failed"
        APT_UPDATED=1
    fi
}

apt_install() {
    msg "installing: $*"
    if ! $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >&2; then
        apt_update
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >&2 ||
            die "apt-get install $* failed"
    fi
}

pkg_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

# ---- host tools -------------------------------------------------------------------------------
need=()
pkg_installed busybox-static || need+=(busybox-static)
command -v sg_persist >/dev/null || need+=(sg3-utils)
command -v cpio >/dev/null || need+=(cpio)
command -v modinfo >/dev/null || need+=(kmod)
command -v gcc >/dev/null || need+=(gcc)
pkg_installed libc6-dev || need+=(libc6-dev)
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v gzip >/dev/null || need+=(gzip)
if [ ${#need[@]} -gt 0 ]; then
    apt_install "${need[@]}"
fi

BUSYBOX=/bin/busybox
[ -x "$BUSYBOX" ] || BUSYBOX=$(command -v busybox)
if ldd "$BUSYBOX" >/dev/null 2>&1; then
    die "$BUSYBOX is dynamically linked; busybox-static is required"
fi

# ---- kernel -----------------------------------------------------------------------------------
KPKG=${SHAREDISK_GUEST_KERNEL_PKG:-}
find_kpkg() {
    apt-cache depends linux-image-cloud-amd64 2>/dev/null |
        awk '/Depends: linux-image-[0-9]/ { print $2; exit }'
}
if [ -z "$KPKG" ]; then
    KPKG=$(find_kpkg)
    if [ -z "$KPKG" ]; then
        apt_update
        KPKG=$(find_kpkg)
    fi
    [ -n "$KPKG" ] || die "cannot resolve linux-image-cloud-amd64 to a versioned kernel package"
fi
KVER=${KPKG#linux-image-}
msg "kernel package: $KPKG"

mkdir -p "$CACHE/debs"
KDIR="$CACHE/kernel/$KVER"
if [ ! -f "$KDIR/.extracted" ]; then
    deb=$(ls "$CACHE/debs/${KPKG}_"*.deb 2>/dev/null | sort -V | tail -n1 || true)
    if [ -z "$deb" ]; then
        msg "downloading $KPKG"
        if ! (cd "$CACHE/debs" && apt-get download "$KPKG" >&2 2>/dev/null); then
            apt_update
            (cd "$CACHE/debs" && apt-get download "$KPKG" >&2) || die "apt-get download $KPKG failed"
        fi
        deb=$(ls "$CACHE/debs/${KPKG}_"*.deb | sort -V | tail -n1)
    fi
    rm -rf "$KDIR"
    mkdir -p "$KDIR"
    msg "extracting $(basename "$deb")"
    dpkg-deb -x "$deb" "$KDIR"
    touch "$KDIR/.extracted"
fi
VMLINUZ="$KDIR/boot/vmlinuz-$KVER"
[ -f "$VMLINUZ" ] || die "no $VMLINUZ in $KPKG"
MODDIR="$KDIR/lib/modules/$KVER"
[ -d "$MODDIR" ] || MODDIR="$KDIR/usr/lib/modules/$KVER"
[ -d "$MODDIR" ] || die "no modules directory for $KVER"

# ---- staging ----------------------------------------------------------------------------------
STAGE=$(mktemp -d "$CACHE/stage.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
R="$STAGE/root"
mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,lib,lib64,lib/modules,etc,proc,sys,dev,tmp,run,root,mnt}

install -m 0755 "$HERE/init" "$R/init"

# busybox + applets
cp "$BUSYBOX" "$R/bin/busybox"
"$BUSYBOX" --list-full | while read -r applet; do
    [ -n "$applet" ] || continue
    [ "$applet" = bin/busybox ] && continue
    [ -e "$R/$applet" ] && continue
    mkdir -p "$R/$(dirname "$applet")"
    ln -s /bin/busybox "$R/$applet"
done

# copy a host file (following symlinks) to the same path inside the initramfs
copy_host() {
    local src=$1
    [ -e "$R$src" ] && return 0
    mkdir -p "$R$(dirname "$src")"
    cp -L "$src" "$R$src"
}

# copy an ELF binary's shared libraries (and the dynamic loader)
copy_libs() {
    local bin=$1 lib
    ldd "$bin" 2>/dev/null | awk '/=> \// { print $3 } /^[ \t]*\// { print $1 }' | while read -r lib; do
        copy_host "$lib"
    done
}

# sg3-utils: every ELF binary of the package
sg_bins=$(dpkg -L sg3-utils | grep -E '^/usr/bin/[^/]+$' || true)
[ -n "$sg_bins" ] || die "sg3-utils has no binaries?"
for b in $sg_bins; do
    [ -f "$b" ] || continue
    if head -c4 "$b" | grep -q 'ELF'; then
        cp "$b" "$R/usr/bin/"
        copy_libs "$b"
    fi
done
# sg3-utils names REPORT SUPPORTED OPERATION CODES "sg_opcodes"; offer the other name too.
[ -e "$R/usr/bin/sg_rep_opcodes" ] || ln -s sg_opcodes "$R/usr/bin/sg_rep_opcodes"
for b in sg_persist sg_turs sg_raw sg_inq sg_readcap sg_vpd sg_opcodes sg_rep_opcodes sg_sync sg_unmap sg_write_same; do
    [ -x "$R/usr/bin/$b" ] || die "sg3-utils binary $b missing"
done

# pr-ioctl
gcc -static -O2 -Wall -o "$R/usr/bin/pr-ioctl" "$HERE/pr-ioctl.c"
strip "$R/usr/bin/pr-ioctl" 2>/dev/null || true

# ---- kernel modules (dependency order) ----------------------------------------------------------
declare -A MODPATH=()
while IFS= read -r -d '' f; do
    n=$(basename "$f")
    n=${n%%.ko*}
    MODPATH[${n//-/_}]=$f
done < <(find "$MODDIR" -name '*.ko*' -print0)

declare -A SEEN=()
ORDER=()
visit() {
    local m=${1//-/_} d
    [ -n "${SEEN[$m]:-}" ] && return 0
    SEEN[$m]=1
    local f=${MODPATH[$m]:-}
    if [ -z "$f" ]; then
        if grep -qE "/${m}\.ko" "$MODDIR/modules.builtin" 2>/dev/null ||
            grep -qE "/${1}\.ko" "$MODDIR/modules.builtin" 2>/dev/null; then
            return 0 # built into the kernel
        fi
        die "kernel module $m not found in $KPKG"
    fi
    for d in $(modinfo -F depends "$f" | tr ',' ' '); do
        visit "$d"
    done
    ORDER+=("$m")
}
for m in $WANT_MODULES; do visit "$m"; done

: >"$R/etc/modules.order"
for m in "${ORDER[@]}"; do
    f=${MODPATH[$m]}
    case "$f" in
        *.ko) cp "$f" "$R/lib/modules/$m.ko" ;;
        *.ko.xz)
            command -v xz >/dev/null || apt_install xz-utils
            xz -dc "$f" >"$R/lib/modules/$m.ko" ;;
        *.ko.zst)
            command -v zstd >/dev/null || apt_install zstd
            zstd -dcq "$f" >"$R/lib/modules/$m.ko" ;;
        *.ko.gz) gzip -dc "$f" >"$R/lib/modules/$m.ko" ;;
        *) die "unknown module format: $f" ;;
    esac
    echo "$m" >>"$R/etc/modules.order"
done
msg "modules: ${ORDER[*]}"

echo "root:x:0:0:root:/root:/bin/sh" >"$R/etc/passwd"
echo "root:x:0:" >"$R/etc/group"
echo "$KVER" >"$R/etc/sharedisk-kernel"

# ---- pack ---------------------------------------------------------------------------------------
(cd "$R" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) | gzip -6 >"$STAGE/initramfs.img"
cp "$VMLINUZ" "$STAGE/vmlinuz"
mv -f "$STAGE/vmlinuz" "$CACHE/vmlinuz"
mv -f "$STAGE/initramfs.img" "$CACHE/initramfs.img"
echo "$KVER" >"$CACHE/kernel-version"
echo "$STAMP_WANT" >"$CACHE/stamp"
msg "built $CACHE/vmlinuz ($KVER) and $CACHE/initramfs.img ($(du -h "$CACHE/initramfs.img" | cut -f1))"
