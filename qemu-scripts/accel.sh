#!/bin/bash
# Choose the QEMU accelerator for sharedisk test guests.
#
#   source qemu-scripts/accel.sh   -> sets SHAREDISK_ACCEL_NAME (kvm|tcg) and the array
#                                     SHAREDISK_ACCEL_ARGS (QEMU arguments), reason on stderr
#   qemu-scripts/accel.sh          -> prints the choice (kvm|tcg) on stdout, reason on stderr
#
# SHAREDISK_ACCEL=kvm|tcg forces the choice.  Otherwise KVM is used only when /dev/kvm is
# readable and writable AND /proc/cpuinfo advertises vmx or svm (a /dev/kvm without hardware
# virtualisation, e.g. in nested setups, makes guests hang); otherwise TCG.

sharedisk_choose_accel() {
    local reason
    case "${SHAREDISK_ACCEL:-}" in
        kvm) SHAREDISK_ACCEL_NAME=kvm; reason="forced by SHAREDISK_ACCEL=kvm" ;;
        tcg) SHAREDISK_ACCEL_NAME=tcg; reason="forced by SHAREDISK_ACCEL=tcg" ;;
        "")
            if [ ! -e /dev/kvm ]; then
                SHAREDISK_ACCEL_NAME=tcg; reason="/dev/kvm does not exist"
            elif [ ! -r /dev/kvm ] || [ ! -w /dev/kvm ]; then
                SHAREDISK_ACCEL_NAME=tcg; reason="/dev/kvm is not readable+writable"
            elif ! grep -qwE 'vmx|svm' /proc/cpuinfo 2>/dev/null; then
                SHAREDISK_ACCEL_NAME=tcg; reason="/dev/kvm exists but the CPU flags have no vmx/svm"
            else
                SHAREDISK_ACCEL_NAME=kvm; reason="/dev/kvm usable and CPU has vmx/svm"
            fi
            ;;
        *)
            echo "accel: invalid SHAREDISK_ACCEL='${SHAREDISK_ACCEL}' (want kvm or tcg)" >&2
            return 1
            ;;
    esac
    if [ "$SHAREDISK_ACCEL_NAME" = kvm ]; then
        SHAREDISK_ACCEL_ARGS=(-accel kvm -cpu host)
    else
        SHAREDISK_ACCEL_ARGS=(-accel tcg,thread=multi)
    fi
    echo "accel: $SHAREDISK_ACCEL_NAME ($reason)" >&2
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    # executed
    sharedisk_choose_accel || exit 1
    echo "$SHAREDISK_ACCEL_NAME"
else
    # sourced
    sharedisk_choose_accel || return 1
fi
