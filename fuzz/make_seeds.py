#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets into fuzz/corpus/<target>/ (run it again after
changing an input format; each target's header comment describes its format).

Seeds are small, meaningful inputs: a real CDB for every supported opcode, a valid PR OUT
parameter list for every service action (TransportIDs included), valid virtio-blk and
virtio-scsi descriptor chains in each layout, valid state files and valid command lines.
"""

import json
import os
import shutil
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")

INIT = {"vm1": 0, "vm2": 1, "vm3": 2, "stranger": 3}
IQN = b"iqn.2026-11.io.sharedisk:"


def le16(v):
    return struct.pack("<H", v)


def le32(v):
    return struct.pack("<I", v)


def le64(v):
    return struct.pack("<Q", v)


def be16(v):
    return struct.pack(">H", v)


def be32(v):
    return struct.pack(">I", v)


def be64(v):
    return struct.pack(">Q", v)


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- SCSI building blocks ----

def transport_id(name, fmt=0, isid=None):
    """An iSCSI TransportID (SPC-4 7.6.4.6): format 00b name, or 01b name,i,0x<ISID>."""
    text = IQN + name.encode()
    if fmt == 1:
        text += b",i,0x" + (isid or b"23d000000001")
    body = text + b"\0"
    body += b"\0" * (-len(body) % 4)
    body += b"\0" * max(0, 20 - len(body))
    return bytes([0x05 | (fmt << 6), 0]) + be16(len(body)) + body


def prout_cdb(sa, res_type=0, plen=24):
    return bytes([0x5F, sa, res_type & 0x0F, 0, 0]) + be32(plen) + b"\0"


def prout_params(key=0, sark=0, flags=0):
    return be64(key) + be64(sark) + b"\0" * 4 + bytes([flags, 0]) + b"\0\0"


def rm_params(key, sark, tid, unreg=False, aptpl=False):
    flags = (0x02 if unreg else 0) | (0x01 if aptpl else 0)
    return be64(key) + be64(sark) + bytes([0, flags]) + be16(0) + be32(len(tid)) + tid


def prin_cdb(sa, alloc=8192):
    return bytes([0x5E, sa, 0, 0, 0, 0, 0]) + be16(alloc) + b"\0"


def rw10(op, lba, blocks, byte1=0):
    return bytes([op, byte1]) + be32(lba) + b"\0" + be16(blocks) + b"\0"


def rw12(op, lba, blocks):
    return bytes([op, 0]) + be32(lba) + be32(blocks) + b"\0\0"


def rw16(op, lba, blocks, byte1=0):
    return bytes([op, byte1]) + be64(lba) + be32(blocks) + b"\0\0"


def caching_page(wce):
    p = bytearray(20)
    p[0], p[1] = 0x08, 0x12
    if wce:
        p[2] = 0x04
    return bytes(p)


MODE_SELECT6_PARAMS = bytes([0, 0, 0, 8]) + be32(256) + bytes([0, 0, 2, 0]) + caching_page(False)
MODE_SELECT10_PARAMS = (
    be16(0) + bytes([0, 0, 1, 0]) + be16(16) + be64(0) + be32(0) + be32(512) + caching_page(True)
)
UNMAP_PARAMS = be16(6 + 16) + be16(16) + b"\0" * 4 + be64(8) + be32(4) + b"\0" * 4

# (name, cdb, data-out, data-in size) for every supported opcode on a 256-block disk.
PATTERN = bytes((i * 7 + 1) & 0xFF for i in range(512))
OPCODES = [
    ("test_unit_ready", bytes(6), b"", 0),
    ("request_sense", bytes([0x03, 0, 0, 0, 252, 0]), b"", 252),
    ("request_sense_desc", bytes([0x03, 1, 0, 0, 252, 0]), b"", 252),
    ("read6", bytes([0x08, 0, 0, 1, 2, 0]), b"", 1024),
    ("write6", bytes([0x0A, 0, 0, 1, 1, 0]), PATTERN, 0),
    ("inquiry", bytes([0x12, 0, 0, 0, 96, 0]), b"", 96),
    ("inquiry_vpd00", bytes([0x12, 1, 0x00, 0, 255, 0]), b"", 255),
    ("inquiry_vpd80", bytes([0x12, 1, 0x80, 0, 255, 0]), b"", 255),
    ("inquiry_vpd83", bytes([0x12, 1, 0x83, 0, 255, 0]), b"", 255),
    ("inquiry_vpdb0", bytes([0x12, 1, 0xB0, 0, 255, 0]), b"", 255),
    ("inquiry_vpdb1", bytes([0x12, 1, 0xB1, 0, 255, 0]), b"", 255),
    ("inquiry_vpdb2", bytes([0x12, 1, 0xB2, 0, 255, 0]), b"", 255),
    ("mode_select6", bytes([0x15, 0x10, 0, 0, len(MODE_SELECT6_PARAMS), 0]), MODE_SELECT6_PARAMS, 0),
    ("reserve6", bytes([0x16, 0, 0, 0, 0, 0]), b"", 0),
    ("release6", bytes([0x17, 0, 0, 0, 0, 0]), b"", 0),
    ("mode_sense6_all", bytes([0x1A, 0, 0x3F, 0, 255, 0]), b"", 255),
    ("mode_sense6_caching_changeable", bytes([0x1A, 8, 0x48, 0, 255, 0]), b"", 255),
    ("start_stop_unit_stop", bytes([0x1B, 0, 0, 0, 0, 0]), b"", 0),
    ("start_stop_unit_start", bytes([0x1B, 1, 0, 0, 1, 0]), b"", 0),
    ("read_capacity10", bytes([0x25]) + bytes(9), b"", 8),
    ("read10", rw10(0x28, 2, 2, 0x08), b"", 1024),
    ("write10", rw10(0x2A, 3, 1, 0x08), PATTERN, 0),
    ("verify10_bytchk", rw10(0x2F, 3, 1, 0x02), PATTERN, 0),
    ("verify10_medium", rw10(0x2F, 0, 8), b"", 0),
    ("pre_fetch10", rw10(0x34, 0, 16, 0x02), b"", 0),
    ("synchronize_cache10", rw10(0x35, 0, 0), b"", 0),
    ("write_same10", rw10(0x41, 16, 8), PATTERN, 0),
    ("write_same10_unmap", rw10(0x41, 16, 8, 0x08), bytes(512), 0),
    ("unmap", bytes([0x42, 0, 0, 0, 0, 0]) + bytes([0]) + be16(len(UNMAP_PARAMS)) + b"\0", UNMAP_PARAMS, 0),
    ("mode_select10", bytes([0x55, 0x10, 0, 0, 0, 0, 0]) + be16(len(MODE_SELECT10_PARAMS)) + b"\0",
     MODE_SELECT10_PARAMS, 0),
    ("mode_sense10_llbaa", bytes([0x5A, 0x10, 0x3F, 0, 0, 0, 0]) + be16(512) + b"\0", b"", 512),
    ("read16", rw16(0x88, 4, 2, 0x10), b"", 1024),
    ("compare_and_write", rw16(0x89, 6, 1, 0x08), bytes(512) + PATTERN, 0),
    ("compare_and_write_miscompare", rw16(0x89, 4, 1), PATTERN + PATTERN, 0),
    ("write16", rw16(0x8A, 4, 1, 0x08), PATTERN, 0),
    ("verify16", rw16(0x8F, 4, 1, 0x06), PATTERN, 0),
    ("pre_fetch16", rw16(0x90, 0, 8), b"", 0),
    ("synchronize_cache16", rw16(0x91, 8, 8, 0x02), b"", 0),
    ("write_same16_ndob", rw16(0x93, 32, 64, 0x09), b"", 0),
    ("write_same16", rw16(0x93, 32, 4), PATTERN, 0),
    ("read_capacity16", bytes([0x9E, 0x10]) + bytes(8) + be32(32) + b"\0\0", b"", 32),
    ("report_luns", bytes([0xA0, 0, 0, 0, 0, 0]) + be32(64) + b"\0\0", b"", 64),
    ("report_opcodes_all", bytes([0xA3, 0x0C, 0x80, 0, 0, 0]) + be32(4096) + b"\0\0", b"", 4096),
    ("report_opcodes_one", bytes([0xA3, 0x0C, 0x01, 0x28, 0, 0]) + be32(64) + b"\0\0", b"", 64),
    ("report_opcodes_sa", bytes([0xA3, 0x0C, 0x02, 0x5F, 0, 7]) + be32(64) + b"\0\0", b"", 64),
    ("read12", rw12(0xA8, 5, 1), b"", 512),
    ("write12", rw12(0xAA, 5, 1), PATTERN, 0),
]
for sa, name in enumerate(["read_keys", "read_reservation", "report_capabilities", "read_full_status"]):
    OPCODES.append(("prin_" + name, prin_cdb(sa), b"", 8192))


# ---- target 1: scsi_target ----

def cmd(init, cdb, out=b"", in_len=0, kind=0, splits=(0, 0), big=False):
    h = INIT[init] | (kind << 2) | (0x80 if big else 0)
    return bytes([h, len(cdb)]) + cdb + le16(len(out)) + out + le16(in_len) + bytes(splits)


def tmf(init, lun_reset):
    return bytes([INIT[init] | (3 << 2) | (0x10 if lun_reset else 0)])


def prout(init, sa, params, res_type=0):
    return cmd(init, prout_cdb(sa, res_type, len(params)), params)


# Each known initiator's first command sees 06/29/00; a TUR each clears it.
PREAMBLE = b"".join(cmd(i, bytes(6)) for i in ("vm1", "vm2", "vm3"))
SETUP = bytes([0x04])  # 256 blocks, read-write, no reservation.


def scsi_target_seeds():
    t = "scsi_target"
    for name, cdb, out, din in OPCODES:
        # VERIFY compares with what WRITE(16) put at LBA 3 and 4 first.
        before = cmd("vm1", rw16(0x8A, 3, 2), PATTERN * 2) if name.startswith("verify") else b""
        write(t, "op_" + name, SETUP + PREAMBLE + before + cmd("vm1", cdb, out, din))
    # A buffer in two pieces, and a large data-in.
    write(t, "split_write_read", SETUP + PREAMBLE
          + cmd("vm2", rw10(0x2A, 7, 1), PATTERN, splits=(100, 0))
          + cmd("vm2", rw10(0x28, 7, 1), b"", 512, splits=(0, 200)))
    write(t, "read_large", bytes([0x07]) + PREAMBLE + cmd("vm1", rw16(0x88, 0, 8192), b"", 8192, big=True))
    write(t, "read_only_write", bytes([0x0C]) + PREAMBLE + cmd("vm1", rw10(0x2A, 0, 1), PATTERN))
    write(t, "empty_disk", bytes([0x00]) + PREAMBLE
          + cmd("vm1", bytes([0x25]) + bytes(9), b"", 8)
          + cmd("vm1", rw10(0x28, 0, 0), b"", 0))
    write(t, "unit_attention_first", SETUP + cmd("vm1", rw10(0x28, 0, 1), b"", 512)
          + cmd("vm1", bytes([0x03, 0, 0, 0, 18, 0]), b"", 18))
    # A LUN that does not exist.
    write(t, "missing_lun", SETUP
          + cmd("vm1", bytes([0x12, 0, 0, 0, 96, 0]), b"", 96, kind=2)
          + cmd("vm1", bytes([0xA0, 0, 0, 0, 0, 0]) + be32(64) + b"\0\0", b"", 64, kind=2)
          + cmd("vm1", bytes([0x03, 0, 0, 0, 18, 0]), b"", 18, kind=2)
          + cmd("vm1", rw10(0x28, 0, 1), b"", 512, kind=2))

    # PR OUT: every service action, set up so that it succeeds.
    k1, k2, k3 = 0x1111, 0x2222, 0x3333
    reg = lambda i, k: prout(i, 0, prout_params(0, k))
    s = SETUP + PREAMBLE
    write(t, "prout_register", s + reg("vm1", k1) + cmd("vm1", prin_cdb(0), b"", 64))
    write(t, "prout_reserve", s + reg("vm1", k1) + prout("vm1", 1, prout_params(k1), 1)
          + cmd("vm2", rw10(0x2A, 0, 1), PATTERN) + cmd("vm2", rw10(0x28, 0, 1), b"", 512))
    write(t, "prout_release", s + reg("vm1", k1) + reg("vm2", k2)
          + prout("vm1", 1, prout_params(k1), 5) + prout("vm1", 2, prout_params(k1), 5)
          + cmd("vm2", bytes(6)) + cmd("vm2", prin_cdb(1), b"", 64))
    write(t, "prout_clear", s + reg("vm1", k1) + reg("vm2", k2) + prout("vm1", 3, prout_params(k1))
          + cmd("vm2", bytes(6)))
    write(t, "prout_preempt", s + reg("vm1", k1) + reg("vm2", k2)
          + prout("vm1", 1, prout_params(k1), 3) + prout("vm2", 4, prout_params(k2, k1), 3)
          + cmd("vm1", rw10(0x2A, 0, 1), PATTERN) + cmd("vm1", bytes(6)) + cmd("vm2", prin_cdb(3), b"", 512))
    write(t, "prout_preempt_and_abort", s + reg("vm1", k1) + reg("vm2", k2) + reg("vm3", k3)
          + prout("vm1", 1, prout_params(k1), 6) + prout("vm2", 5, prout_params(k2, k1), 6)
          + cmd("vm3", rw10(0x28, 0, 1), b"", 512))
    write(t, "prout_register_and_ignore", s + prout("vm1", 6, prout_params(0, k1))
          + prout("vm1", 6, prout_params(0xdead, k2, 0x01)) + cmd("vm1", prin_cdb(2), b"", 8))
    write(t, "prout_register_and_move", s + reg("vm1", k1) + prout("vm1", 1, prout_params(k1), 1)
          + prout("vm1", 7, rm_params(k1, k2, transport_id("vm2")), 1)
          + cmd("vm2", prin_cdb(3), b"", 512))
    write(t, "prout_register_and_move_isid_unreg", s + reg("vm1", k1) + prout("vm1", 1, prout_params(k1), 3)
          + prout("vm1", 7, rm_params(k1, k3, transport_id("vm3", 1), unreg=True), 3)
          + cmd("vm3", rw10(0x2A, 1, 1), PATTERN))
    write(t, "prout_all_registrants", s + reg("vm1", k1) + reg("vm2", k2)
          + prout("vm1", 1, prout_params(k1), 8) + prout("vm3", 0, prout_params(0, k3))
          + prout("vm2", 4, prout_params(k2, 0), 7) + prout("vm1", 0, prout_params(k1, 0)))
    # fence_scsi: register-and-ignore everywhere, WE-RO, then the survivor preempts the dead node.
    write(t, "flow_fence_scsi", s + prout("vm1", 6, prout_params(0, k1)) + prout("vm2", 6, prout_params(0, k2))
          + prout("vm1", 1, prout_params(k1), 5) + prout("vm2", 5, prout_params(k2, k1), 5)
          + cmd("vm1", rw10(0x2A, 9, 1), PATTERN) + cmd("vm1", bytes(6))
          + cmd("vm1", rw10(0x2A, 9, 1), PATTERN) + cmd("vm2", rw10(0x2A, 9, 1), PATTERN))
    # SPC-2 RESERVE(6), a conflict for another initiator, then resets.
    write(t, "flow_spc2", s + cmd("vm1", bytes([0x16, 0, 0, 0, 0, 0])) + cmd("vm2", rw10(0x28, 0, 1), b"", 512)
          + tmf("vm2", False) + cmd("vm2", bytes(6)) + tmf("vm1", True) + cmd("vm2", rw10(0x28, 0, 1), b"", 512))
    # Start from a reservation held by vm2 (state preset 1).
    write(t, "preset_we_held", bytes([0x14]) + PREAMBLE + cmd("vm1", rw10(0x2A, 0, 1), PATTERN)
          + cmd("vm2", rw10(0x2A, 0, 1), PATTERN) + cmd("stranger", rw10(0x28, 0, 1), b"", 512))


# ---- target 2: pr_wire ----

def pr_wire_seeds():
    t = "pr_wire"
    sel = 0 | (1 << 2)  # vm1, which is registered with key 1 while vm2 holds WRITE EXCLUSIVE.
    cases = {
        "register": (0, 0, prout_params(1, 0x10)),
        "register_unregister": (0, 0, prout_params(1, 0)),
        "reserve": (1, 1, prout_params(1)),
        "release": (2, 1, prout_params(1)),
        "clear": (3, 0, prout_params(1)),
        "preempt": (4, 3, prout_params(1, 2)),
        "preempt_and_abort": (5, 1, prout_params(1, 2)),
        "register_and_ignore": (6, 0, prout_params(0, 0x77, 0x05)),
        "spec_i_pt": (0, 0, prout_params(0, 5, 0x08) + be32(len(transport_id("vm3"))) + transport_id("vm3")),
        "register_and_move": (7, 1, rm_params(1, 9, transport_id("vm3"))),
        "register_and_move_isid": (7, 1, rm_params(1, 9, transport_id("vm2", 1), unreg=True, aptpl=True)),
        "register_and_move_stranger": (7, 1, rm_params(1, 9, transport_id("stranger"))),
    }
    for name, (sa, typ, params) in cases.items():
        write(t, "prout_" + name, bytes([sel]) + prout_cdb(sa, typ, len(params)) + params)
    # vm2, the holder, moving its reservation.
    params = rm_params(2, 9, transport_id("vm1"))
    write(t, "prout_register_and_move_holder", bytes([1 | (1 << 2)]) + prout_cdb(7, 1, len(params)) + params)
    # PR IN service actions (the CDB bytes are reused with opcode 5Eh).
    for sa in range(4):
        write(t, f"prin_{sa}", bytes([sel]) + bytes([0x5F, sa, 0, 0, 0, 0, 0]) + be16(4096) + b"\0")
    # CDB decoding: the parameter list is decoded as a CDB too (bit 5: byte 1 is the opcode).
    for name, cdb, _, _ in OPCODES:
        if len(cdb) >= 10:
            write(t, "cdb_" + name, bytes([0x20]) + cdb[:10] + cdb)
        else:
            write(t, "cdb_" + name, bytes([0x20]) + (cdb + bytes(10))[:10] + cdb)
    write(t, "mode_select6", bytes([0x00]) + prout_cdb(0) + MODE_SELECT6_PARAMS)
    write(t, "mode_select10", bytes([0x10]) + prout_cdb(0) + MODE_SELECT10_PARAMS)
    write(t, "unmap", bytes([0x00]) + prout_cdb(0) + UNMAP_PARAMS)
    write(t, "transport_id", bytes([0x00]) + prout_cdb(0) + transport_id("vm1", 1))


# ---- targets 3 and 4: blk_chain and scsi_chain ----

NEXT, WRITE, INDIRECT = 1, 2, 4
DATA = 0x3000


def desc(addr, length, flags=0, nxt=0):
    return le64(addr) + le32(length) + le16(flags) + le16(nxt)


def chain(table, size=8):
    t = b"".join(table)
    return t + b"\0" * (16 * size - len(t))


def ring(flags, start, heads, table, data, addrs=None):
    """flags bits 0-2: log2(size); bit 3 EVENT_IDX; bit 4 addresses follow."""
    size = 1 << (flags & 7)
    out = bytes([flags]) + le16(start) + bytes([len(heads)])
    if addrs is not None:
        out += b"".join(le64(a) for a in addrs)
    out += chain(table, size) + b"".join(le16(h) for h in heads) + data
    return out


def blk_header(req_type, sector=0):
    return le32(req_type) + le32(0) + le64(sector)


def blk_seeds():
    t = "blk_chain"
    dev = bytes([0x00])  # vm1, read-write, no reservation
    f8 = 3  # queue size 8

    def simple(name, req_type, sector=0, out=b"", in_len=0, dev=dev, flags=f8):
        data = blk_header(req_type, sector) + out
        table = [desc(DATA, 16, NEXT, 1)]
        nxt = 1
        if out:
            table[-1] = desc(DATA, 16, NEXT, nxt)
            table.append(desc(DATA + 16, len(out), NEXT, nxt + 1))
            nxt += 1
        if in_len:
            table.append(desc(DATA + 0x400, in_len, WRITE | NEXT, nxt + 1))
            nxt += 1
        table.append(desc(DATA + 0x1000, 1, WRITE))
        write(t, name, dev + ring(flags, 0, [0], table, data))

    simple("in", 0, 1, in_len=1024)
    simple("out", 1, 2, out=PATTERN)
    simple("flush", 4)
    simple("get_id", 8, in_len=20)
    simple("discard", 11, out=le64(4) + le32(8) + le32(0))
    simple("write_zeroes_unmap", 13, out=le64(8) + le32(8) + le32(1) + le64(32) + le32(1) + le32(0))
    simple("unsupported", 99)
    simple("read_only_out", 1, 2, out=PATTERN, dev=bytes([0x04]))
    simple("conflict_out", 1, 2, out=PATTERN, dev=bytes([0x00 | (1 << 3)]))
    simple("holder_out", 1, 2, out=PATTERN, dev=bytes([0x01 | (1 << 3)]))
    simple("event_idx_in", 0, 0, in_len=512, flags=f8 | 0x08)
    # Indirect: one descriptor pointing at a table of three.
    ind = desc(DATA, 16, NEXT, 1) + desc(DATA + 0x400, 512, WRITE | NEXT, 2) + desc(DATA + 0x1000, 1, WRITE)
    data = blk_header(0, 3) + b"\0" * (0x100 - 16) + ind
    write(t, "indirect_in", dev + ring(f8, 0, [0], [desc(DATA + 0x100, len(ind), INDIRECT)], data))
    # The header cut over two descriptors, the data straddling two memory regions.
    data = blk_header(1, 5)
    table = [desc(DATA, 6, NEXT, 1), desc(DATA + 6, 10, NEXT, 2), desc(0xFF00, 512, NEXT, 3),
             desc(DATA + 0x1000, 1, WRITE)]
    write(t, "split_header_cross_region", dev + ring(f8, 0, [0], table, data))
    # Three chains at the ring's wrap-around.
    data = blk_header(0, 0) + blk_header(1, 1) + PATTERN + blk_header(4, 0)
    table = [desc(DATA, 16, NEXT, 1), desc(DATA + 0x400, 512, WRITE | NEXT, 2), desc(DATA + 0x1000, 1, WRITE),
             desc(DATA + 16, 16, NEXT, 4), desc(DATA + 32, 512, NEXT, 5), desc(DATA + 0x1001, 1, WRITE),
             desc(DATA + 544, 16, NEXT, 7), desc(DATA + 0x1002, 1, WRITE)]
    write(t, "three_chains_wrap", dev + ring(f8, 0xFFFE, [0, 3, 6], table, data))
    # Ring addresses given explicitly (the standard ones).
    table = [desc(DATA, 16, NEXT, 1), desc(DATA + 0x1000, 1, WRITE)]
    write(t, "ring_addresses", dev + ring(f8 | 0x10, 0, [0], table, blk_header(4),
                                          addrs=(0x0, 0x1000, 0x2000)))


def scsi_req(cdb, lun=(1, 0, 0, 0, 0, 0, 0, 0), tag=1):
    return bytes(lun) + le64(tag) + bytes([0, 0, 0]) + cdb + bytes(32 - len(cdb))


REQ, RESP = 51, 108


def scsi_seeds():
    t = "scsi_chain"
    f8 = 3

    def request(name, cdb, out=b"", in_len=0, dev=0x00, lun=(1, 0, 0, 0, 0, 0, 0, 0)):
        # A TEST UNIT READY first takes the initiator's 06/29/00 power-on unit attention.
        data = scsi_req(bytes(6)) + scsi_req(cdb, lun, tag=2) + out
        table = [desc(DATA, REQ, NEXT, 1), desc(DATA + 0x600, RESP, WRITE), desc(DATA + REQ, REQ, NEXT, 3)]
        if out:
            table.append(desc(DATA + 2 * REQ, len(out), NEXT, len(table) + 1))
        table.append(desc(DATA + 0x800, RESP, WRITE | (NEXT if in_len else 0), len(table) + 1))
        if in_len:
            table.append(desc(DATA + 0x1000, in_len, WRITE))
        write(t, name, bytes([dev]) + ring(f8, 0, [0, 2], table, data))

    request("test_unit_ready", bytes(6))
    request("inquiry", bytes([0x12, 0, 0, 0, 96, 0]), in_len=96)
    request("read10", rw10(0x28, 0, 2), in_len=1024)
    request("write10", rw10(0x2A, 1, 1), out=PATTERN)
    params = prout_params(0, 0x1111)
    request("prout_register", prout_cdb(0, 0, len(params)), out=params)
    params = rm_params(2, 9, transport_id("vm1"))
    request("prout_register_and_move", prout_cdb(7, 1, len(params)), out=params, dev=0x01 | (1 << 3))
    request("prin_read_full_status", prin_cdb(3, 1024), in_len=1024, dev=1 << 3)
    request("report_luns_missing_lun", bytes([0xA0, 0, 0, 0, 0, 0]) + be32(64) + b"\0\0", in_len=64,
            lun=(1, 0, 0x40, 1, 0, 0, 0, 0))
    request("bad_target", bytes(6), lun=(2, 0, 0, 0, 0, 0, 0, 0))
    # Two commands in one ring, the second through an indirect table.
    data = scsi_req(bytes(6)) + scsi_req(rw10(0x28, 0, 1), tag=2)
    ind = desc(DATA + REQ, REQ, NEXT, 1) + desc(DATA + 0xA00, RESP, WRITE | NEXT, 2) + desc(DATA + 0x1000, 512, WRITE)
    data += b"\0" * (0x200 - len(data)) + ind
    table = [desc(DATA, REQ, NEXT, 1), desc(DATA + 0x800, RESP, WRITE), desc(DATA + 0x200, len(ind), INDIRECT)]
    write(t, "two_commands_indirect", bytes([0x02]) + ring(f8 | 0x08, 0, [0, 2], table, data))

    # Control queue (device bit 5): TMFs and asynchronous notification queries.
    def control(name, req, resp_len, dev=0x20):
        table = [desc(DATA, len(req), NEXT, 1), desc(DATA + 0x800, resp_len, WRITE)]
        write(t, name, bytes([dev]) + ring(f8, 0, [0], table, req))

    lun0 = bytes([1, 0, 0, 0, 0, 0, 0, 0])
    for sub, name in [(0, "abort_task"), (3, "lun_reset"), (5, "i_t_nexus_reset"), (7, "query_task")]:
        control("tmf_" + name, le32(0) + le32(sub) + lun0 + le64(1), 1)
    control("an_query", le32(1) + lun0 + le32(0), 8)
    control("an_subscribe", le32(2) + lun0 + le32(0xFFFF), 8)


# ---- target 5: state_file ----

def state_file(reservations):
    return (json.dumps({"format": 1, "image": {"path": "/fuzz/disk.img", "inode": 42},
                        "reservations": reservations}, indent=2) + "\n").encode()


def state_seeds():
    t = "state_file"
    reg = lambda i, k: {"initiator": i, "key": k}
    write(t, "empty", state_file({"generation": 0, "registrations": [], "reservation": None, "aptpl": False}))
    write(t, "registered", state_file({"generation": 2, "registrations": [reg("vm1", 4369), reg("vm2", 8738)],
                                       "reservation": None, "aptpl": True}))
    write(t, "write_exclusive", state_file({
        "generation": 3, "registrations": [reg("vm1", 4369), reg("vm2", 8738)],
        "reservation": {"holder": {"Initiator": "vm1"}, "res_type": "WriteExclusive"}, "aptpl": False}))
    write(t, "all_registrants", state_file({
        "generation": 4294967295, "registrations": [reg("vm3", 7), reg("stranger", 7)],
        "reservation": {"holder": "AllRegistrants", "res_type": "ExclusiveAccessAllRegistrants"},
        "aptpl": False}))
    write(t, "registrants_only", state_file({
        "generation": 9, "registrations": [reg("vm2", 18446744073709551615)],
        "reservation": {"holder": {"Initiator": "vm2"}, "res_type": "ExclusiveAccessRegistrantsOnly"},
        "aptpl": True}))


# ---- target 6: cli ----

def cli_seeds():
    t = "cli"
    args = lambda *a: b"\0".join(x.encode() for x in a)
    base = ("serve", "--image", "d.img", "--socket-dir", "/run/sharedisk", "--guests", "vm1,vm2,vm3")
    write(t, "serve", args(*base))
    write(t, "serve_all_options", args(*base, "--size", "1.5GiB", "--read-only", "--max-shares", "4",
                                       "--state", "/var/lib/d.pr", "--reset-reservations"))
    write(t, "serve_size", args("serve", "--image=d.img", "--size=512M", "--socket-dir=/tmp", "--guests=node-a.b_c"))
    write(t, "qemu_args", args("qemu-args", "--socket-dir", "/run/sharedisk", "--guest", "vm1", "--memory", "1G"))
    write(t, "help", args("serve", "--help"))
    write(t, "version", args("--version"))


def control_seeds():
    t = "control"
    STRANGER, READER, ADMIN = b"\0", b"\1", b"\2"

    def req(method, params=None, id_=1):
        r = {"jsonrpc": "2.0", "id": id_, "method": method}
        if params is not None:
            r["params"] = params
        return json.dumps(r).encode()

    reads = ["version", "status", "guests", "pr.show", "stats", "metrics", "cluster.status"]
    for i, m in enumerate(reads):
        write(t, f"read_{m}", bytes([i & 3]) + READER + req(m))
    yes = {"confirm": True}
    changes = [
        ("pr.clear", yes),
        ("pr.preempt", {"victim": "vm1", "confirm": True}),
        ("pr.preempt", {"victim": "vm2", "abort": True, "confirm": True}),
        ("guest.add", {"name": "vm9", "queues": 2, "read_only": True, "scsi": False}),
        ("guest.remove", {"name": "vm3", "force": True}),
        ("cluster.republish", yes),
        ("cluster.evict", {"node": "n2", "confirm": True}),
        ("cluster.resume", None),
    ]
    for i, (m, p) in enumerate(changes):
        name = f"change_{m}_{i}"
        write(t, name, bytes([1 + (i & 1)]) + ADMIN + req(m, p, i))
        write(t, name + "_refused", bytes([1 + (i & 1)]) + READER + req(m, p, i) + b"\n"
              + STRANGER + req(m, p, "s"))
    write(t, "not_utf8", b"\1" + ADMIN + b'{"jsonrpc":"2.0","id":1,"method":"st\xffatus"}\n'
          + ADMIN + req("version", None, 2))
    write(t, "not_json", b"\0" + ADMIN + b"{]\n" + ADMIN + b"[1,2]\n" + ADMIN + b'{"method":7}')
    write(t, "unknown_method", b"\0" + ADMIN + req("pr.nuke", yes))
    write(t, "unconfirmed", b"\2" + ADMIN + req("pr.clear") + b"\n" + ADMIN
          + req("pr.preempt", {"victim": 5, "confirm": "yes"}))


def config_file_seeds():
    t = "config_file"
    full = b"""[image]
path = "disk.img"
size = "1G"
state = "disk.pr"
read_only = false
max_shares = 8
direct = true
aio = "io_uring"

[server]
socket_dir = "/run/sharedisk"
socket_group = "kvm"
socket_mode = "0660"
control_socket = "/run/sharedisk/control.sock"
control_group = "sharedisk"
admin_group = "wheel"
metrics_listen = "127.0.0.1:9100"
poll_us = 50

[[guest]]
name = "vm1"
queues = 2

[[guest]]
name = "vm2"
read_only = true
scsi = false
"""
    write(t, "full", b"\0" + full)
    write(t, "full_with_agreeing_flags", b"\x05" + full.replace(b'name = "vm2"', b'name = "vm1x"'))
    write(t, "minimal", b"\0" + b'[image]\npath = "/srv/d.img"\n[[guest]]\nname = "vm1"\n')
    write(t, "flags_fill_in", b"\x0f" + b'[image]\npath = "/srv/disk.img"\n')
    write(t, "clash", b"\x02" + b'[image]\npath = "/srv/other.img"\n[[guest]]\nname = "a"\n')
    write(t, "bad_key", b"\0" + b'[image]\npath = "d"\nbogus = 1\n[[guest]]\nname = "a"\n')
    write(t, "bad_name", b"\0" + b'[image]\npath = "d"\n[[guest]]\nname = "../x"\n')
    write(t, "duplicate", b"\0" + b'[image]\npath = "d"\n[[guest]]\nname = "a"\n[[guest]]\nname = "a"\n')
    write(t, "cluster", b"\0" + b'[image]\npath = "d"\n[[guest]]\nname = "a"\n[cluster]\n'
          b'node = "n1"\ndisk_id = "d1"\nendpoints = ["http://127.0.0.1:2379"]\n')


# ---- iSCSI (harness/iscsi_session.rs) ----

def iscsi_pdu(opcode, flags, itt=0, cmdsn=0, data=b"", fields=None):
    """An iSCSI PDU (RFC 7143 BHS, no digests); `fields` maps byte offsets to bytes."""
    b = bytearray(48)
    b[0] = opcode
    b[1] = flags
    b[5:8] = struct.pack(">I", len(data))[1:]
    b[16:20] = be32(itt)
    b[24:28] = be32(cmdsn)
    for at, v in (fields or {}).items():
        b[at:at + len(v)] = v
    pad = (4 - len(data) % 4) % 4
    return bytes(b) + data + b"\0" * pad


def iscsi_cmd(itt, cmdsn, cdb, edtl=0, read=False, write=False, final=True, data=b""):
    flags = (0x80 if final else 0) | (0x40 if read else 0) | (0x20 if write else 0) | 1
    return iscsi_pdu(0x01, flags, itt, cmdsn, data, {20: be32(edtl), 32: cdb.ljust(16, b"\0")})


def iscsi_data_out(itt, ttt, datasn, offset, data, final=True):
    return iscsi_pdu(0x05, 0x80 if final else 0, itt, 0, data,
                     {20: be32(ttt), 36: be32(datasn), 40: be32(offset)})


def iscsi_session_seeds():
    t = "iscsi_session"
    logged_in = b"\x01"
    write(t, "tur", logged_in + iscsi_cmd(1, 1, b"\0" * 6))
    write(t, "inquiry_read", logged_in + iscsi_cmd(1, 1, bytes([0x12, 0, 0, 0, 96, 0]), 96, read=True)
          + iscsi_cmd(2, 2, rw10(0x28, 0, 4), 2048, read=True))
    # 8 KiB write: 4 KiB immediate, the rest on R2T (TTT 1); then unsolicited Data-Out.
    write(t, "write_r2t", logged_in
          + iscsi_cmd(1, 1, rw10(0x2a, 0, 16), 8192, write=True, data=b"\xaa" * 4096)
          + iscsi_data_out(1, 1, 0, 4096, b"\xbb" * 4096))
    write(t, "write_unsolicited", logged_in
          + iscsi_cmd(1, 1, rw10(0x2a, 8, 4), 2048, write=True, final=False, data=b"\x11" * 1024)
          + iscsi_data_out(1, 0xFFFFFFFF, 0, 1024, b"\x22" * 1024))
    write(t, "write_bad_datasn", logged_in
          + iscsi_cmd(1, 1, rw10(0x2a, 0, 16), 8192, write=True, data=b"\xaa" * 4096)
          + iscsi_data_out(1, 1, 7, 4096, b"\xbb" * 4096))
    # WRITE residuals (RFC 7143 §11.4.5.1): EDTL short by a block, inside a block, 0 for a
    # WRITE(6); EDTL beyond the transfer with immediate and unsolicited data past it.
    write(t, "write_edtl_residuals", logged_in
          + iscsi_cmd(1, 1, rw10(0x2a, 0, 2), 512, write=True, data=b"\x33" * 512)
          + iscsi_cmd(2, 2, rw10(0x2a, 4, 1), 200, write=True, data=b"\x44" * 200)
          + iscsi_cmd(3, 3, bytes([0x0a, 0, 0, 8, 2, 0]), 0, write=True)
          + iscsi_cmd(4, 4, rw10(0x2a, 12, 1), 10000, write=True, final=False, data=b"\x55" * 1024)
          + iscsi_data_out(4, 0xFFFFFFFF, 0, 1024, b"\x66" * 1024))
    prout = prout_cdb(0, 0, 24)
    write(t, "pr_register_nop_text_tmf_logout", logged_in
          + iscsi_cmd(1, 1, prout, 24, write=True, data=prout_params(0, 0x1234))
          + iscsi_pdu(0x40, 0x80, 2, 2, b"ping", {20: be32(0xFFFFFFFF)})
          + iscsi_pdu(0x04, 0x80, 3, 2, b"SendTargets=All\0", {20: be32(0xFFFFFFFF)})
          + iscsi_pdu(0x42, 0x80 | 5, 4, 3)
          + iscsi_pdu(0x46, 0x80, 5, 3))
    discovery = (b"InitiatorName=iqn.2026-01.org.example:a\0SessionType=Discovery\0"
                 b"AuthMethod=None\0HeaderDigest=CRC32C,None\0")
    write(t, "discovery_raw", b"\x00"
          + iscsi_pdu(0x43, 0x80 | 3, 1, 1, discovery, {8: b"\x80"})
          + iscsi_pdu(0x04, 0x80, 2, 1, b"SendTargets=All\0"))
    two_stage = b"InitiatorName=iqn.2026-01.org.example:a\0TargetName=iqn.2026-12.io.sharedisk:fuzz\0AuthMethod=None,CHAP\0"
    write(t, "login_two_stages_continued", b"\x02"
          + iscsi_pdu(0x43, 0x40, 1, 1, two_stage[:20], {8: b"\x80"})
          + iscsi_pdu(0x43, 0x80 | 1, 1, 1, two_stage[20:], {8: b"\x80"})
          + iscsi_pdu(0x43, 0x80 | 4 | 3, 1, 1, b"MaxConnections=4\0OFMarkInt=1\0X-x=y\0", {8: b"\x80"}))
    # Mutual CHAP (setup bit 2): AuthMethod, CHAP_A, then a response (the challenge is random, so
    # it fails with 0201) with the initiator's challenge in base64.
    chap_start = b"InitiatorName=iqn.2026-01.org.example:a\0TargetName=iqn.2026-12.io.sharedisk:fuzz\0AuthMethod=CHAP\0"
    write(t, "login_chap_mutual", b"\x06"
          + iscsi_pdu(0x43, 0, 1, 1, chap_start, {8: b"\x80"})
          + iscsi_pdu(0x43, 0, 1, 1, b"CHAP_A=7,5\0", {8: b"\x80"})
          + iscsi_pdu(0x43, 0x80 | 1, 1, 1, b"CHAP_N=a\0CHAP_R=0x000102030405060708090a0b0c0d0e0f\0"
                      b"CHAP_I=7\0CHAP_C=0bAQIDBAUGBwgJCgsMDQ4PEA==\0", {8: b"\x80"}))


def main():
    if os.path.isdir(CORPUS):
        shutil.rmtree(CORPUS)
    scsi_target_seeds()
    pr_wire_seeds()
    blk_seeds()
    scsi_seeds()
    state_seeds()
    cli_seeds()
    control_seeds()
    config_file_seeds()
    iscsi_session_seeds()
    for t in sorted(os.listdir(CORPUS)):
        files = os.listdir(os.path.join(CORPUS, t))
        size = sum(os.path.getsize(os.path.join(CORPUS, t, f)) for f in files)
        print(f"{t}: {len(files)} seeds, {size} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
