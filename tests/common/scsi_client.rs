//! A synchronous virtio-scsi initiator over the raw vhost-user frontend: builds
//! `virtio_scsi_cmd_req` / `virtio_scsi_cmd_resp` chains by hand (virtio 1.2 §5.6.6) and decodes
//! status, fixed-format sense and data-in, plus task management on the control queue.

use std::path::Path;
use std::time::Duration;

use super::daemon::TestDaemon;
use super::vu_frontend::{Desc, VuFrontend, TIMEOUT};

pub const GOOD: u8 = 0x00;
pub const CHECK_CONDITION: u8 = 0x02;
pub const RESERVATION_CONFLICT: u8 = 0x18;
pub const BUSY: u8 = 0x08;

/// virtio-scsi response codes (virtio 1.2 §5.6.6.1).
pub const VIRTIO_SCSI_S_OK: u8 = 0;
pub const VIRTIO_SCSI_S_ABORTED: u8 = 2;
pub const VIRTIO_SCSI_S_BAD_TARGET: u8 = 3;
pub const VIRTIO_SCSI_S_FAILURE: u8 = 9;
/// TMF responses (virtio 1.2 §5.6.6.2): FUNCTION COMPLETE shares the value of S_OK.
pub const VIRTIO_SCSI_S_FUNCTION_COMPLETE: u8 = 0;
pub const VIRTIO_SCSI_S_FUNCTION_SUCCEEDED: u8 = 10;
pub const VIRTIO_SCSI_S_FUNCTION_REJECTED: u8 = 11;
pub const VIRTIO_SCSI_S_INCORRECT_LUN: u8 = 12;

/// TMF subtypes (virtio 1.2 §5.6.6.2).
pub const TMF_ABORT_TASK: u32 = 0;
pub const TMF_ABORT_TASK_SET: u32 = 1;
pub const TMF_CLEAR_ACA: u32 = 2;
pub const TMF_CLEAR_TASK_SET: u32 = 3;
pub const TMF_I_T_NEXUS_RESET: u32 = 4;
pub const TMF_LOGICAL_UNIT_RESET: u32 = 5;
pub const TMF_QUERY_TASK: u32 = 6;
pub const TMF_QUERY_TASK_SET: u32 = 7;

/// PR OUT service actions (SPC-4 §6.16.2).
pub const SA_REGISTER: u8 = 0;
pub const SA_RESERVE: u8 = 1;
pub const SA_RELEASE: u8 = 2;
pub const SA_CLEAR: u8 = 3;
pub const SA_PREEMPT: u8 = 4;
pub const SA_PREEMPT_AND_ABORT: u8 = 5;
pub const SA_REGISTER_AND_IGNORE: u8 = 6;
pub const SA_REGISTER_AND_MOVE: u8 = 7;

/// PR IN service actions (SPC-4 §6.15.1).
pub const PRIN_READ_KEYS: u8 = 0;
pub const PRIN_READ_RESERVATION: u8 = 1;
pub const PRIN_REPORT_CAPABILITIES: u8 = 2;
pub const PRIN_READ_FULL_STATUS: u8 = 3;

/// Byte 20 of the PR OUT parameter list.
pub const FLAG_SPEC_I_PT: u8 = 0x08;
pub const FLAG_ALL_TG_PT: u8 = 0x04;
pub const FLAG_APTPL: u8 = 0x01;

/// Queue indices.
pub const CONTROL_Q: usize = 0;
pub const EVENT_Q: usize = 1;
pub const REQUEST_Q: usize = 2;

pub const REQ_HEADER_LEN: usize = 51;
pub const RESP_LEN: usize = 108;
pub const QUEUE_SIZE: u16 = 128;

/// Target 0, LUN 0, flat addressing.
pub const LUN0: [u8; 8] = [1, 0, 0x40, 0, 0, 0, 0, 0];

/// `[1, target, 0x40 | lun >> 8, lun & 0xff, 0...]`.
pub fn lun_bytes(target: u8, lun: u16) -> [u8; 8] {
    [1, target, 0x40 | (lun >> 8) as u8, lun as u8, 0, 0, 0, 0]
}

pub type SenseTriple = (u8, u8, u8);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScsiResult {
    pub response: u8,
    pub status: u8,
    /// key, ASC, ASCQ of fixed-format sense, if any sense was returned.
    pub sense: Option<SenseTriple>,
    pub resid: u32,
    /// The data-in actually written (used length - 108).
    pub data: Vec<u8>,
    pub used_len: u32,
}

impl ScsiResult {
    pub fn is_good(&self) -> bool {
        self.response == VIRTIO_SCSI_S_OK && self.status == GOOD
    }
}

/// UNIT ATTENTION, POWER ON, RESET, OR BUS DEVICE RESET OCCURRED: what a new nexus sees first.
pub const POWER_ON: SenseTriple = (0x06, 0x29, 0x00);

/// A daemon for `guests` and one client per guest, each past exactly the power-on UA.
pub fn daemon_with_clients(guests: &[&str]) -> (TestDaemon, Vec<ScsiClient>) {
    let d = TestDaemon::start(guests);
    let clients = guests
        .iter()
        .map(|g| {
            let mut c = ScsiClient::connect(&d.scsi(g));
            assert_eq!(c.drain_ua(), vec![POWER_ON], "{g}: power-on UA");
            c
        })
        .collect();
    (d, clients)
}

/// [`daemon_with_clients`] for four initiators, `a` to `d`.
pub fn four_clients() -> (TestDaemon, Vec<ScsiClient>) {
    daemon_with_clients(&["a", "b", "c", "d"])
}

/// Asserts GOOD without sense.
#[track_caller]
pub fn good(r: &ScsiResult, what: &str) {
    assert!(
        r.is_good() && r.sense.is_none(),
        "{what}: expected GOOD, got {r:?}"
    );
}

/// Asserts RESERVATION CONFLICT (a normal transport response, and no sense: SAM-5 §5.3.1).
#[track_caller]
pub fn conflict(r: &ScsiResult, what: &str) {
    assert_eq!(r.response, VIRTIO_SCSI_S_OK, "{what}: {r:?}");
    assert_eq!(
        r.status, RESERVATION_CONFLICT,
        "{what}: expected RESERVATION CONFLICT, got {r:?}"
    );
    assert_eq!(
        r.sense, None,
        "{what}: RESERVATION CONFLICT carries no sense"
    );
}

/// Decodes a 108-byte virtio_scsi_cmd_resp.
/// Asserts CHECK CONDITION with sense `s` (and a normal transport response).
#[track_caller]
pub fn check(r: &ScsiResult, s: SenseTriple, what: &str) {
    assert_eq!(r.response, VIRTIO_SCSI_S_OK, "{what}: {r:?}");
    assert_eq!(
        (r.status, r.sense),
        (CHECK_CONDITION, Some(s)),
        "{what}: expected CHECK CONDITION {s:02x?}, got {r:?}"
    );
}

pub fn parse_resp(resp: &[u8]) -> (u8, u8, Option<SenseTriple>, u32) {
    let sense_len = u32::from_le_bytes(resp[0..4].try_into().unwrap()) as usize;
    let resid = u32::from_le_bytes(resp[4..8].try_into().unwrap());
    let status = resp[10];
    let response = resp[11];
    let sense = &resp[12..12 + sense_len.min(96)];
    let triple = if sense_len >= 14 && matches!(sense[0] & 0x7f, 0x70 | 0x71) {
        Some((sense[2] & 0x0f, sense[12], sense[13]))
    } else if sense_len > 0 {
        panic!("sense not in fixed format: {sense:02x?}")
    } else {
        None
    };
    (response, status, triple, resid)
}

/// The 51-byte request header.
pub fn req_header(lun: &[u8; 8], tag: u64, cdb: &[u8]) -> [u8; REQ_HEADER_LEN] {
    assert!(cdb.len() <= 32);
    let mut h = [0u8; REQ_HEADER_LEN];
    h[..8].copy_from_slice(lun);
    h[8..16].copy_from_slice(&tag.to_le_bytes());
    h[19..19 + cdb.len()].copy_from_slice(cdb);
    h
}

/// PR OUT CDB (SPC-4 §6.16.1).
pub fn prout_cdb(sa: u8, scope_type: u8, param_len: u32) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = 0x5f;
    c[1] = sa & 0x1f;
    c[2] = scope_type;
    c[5..9].copy_from_slice(&param_len.to_be_bytes());
    c
}

/// The basic 24-byte PR OUT parameter list (SPC-4 §6.16.3).
pub fn prout_params(rk: u64, sark: u64, flags: u8) -> [u8; 24] {
    let mut p = [0u8; 24];
    p[0..8].copy_from_slice(&rk.to_be_bytes());
    p[8..16].copy_from_slice(&sark.to_be_bytes());
    p[20] = flags;
    p
}

/// An iSCSI TransportID, format 00b (SPC-4 §7.6.4.6), written independently of the daemon's
/// encoder: protocol 5, ADDITIONAL LENGTH, the NUL-terminated name padded to a multiple of 4.
pub fn iscsi_tid(name: &str) -> Vec<u8> {
    let mut body = name.as_bytes().to_vec();
    body.push(0);
    while !body.len().is_multiple_of(4) || body.len() < 20 {
        body.push(0);
    }
    let mut t = vec![0x05, 0];
    t.extend_from_slice(&(body.len() as u16).to_be_bytes());
    t.extend_from_slice(&body);
    t
}

pub fn guest_iqn(guest: &str) -> String {
    format!("iqn.2026-11.io.sharedisk:{guest}")
}

/// REGISTER AND MOVE parameter list (SPC-4 §6.16.4).
pub fn register_and_move_params(
    rk: u64,
    sark: u64,
    unreg: bool,
    aptpl: bool,
    tid: &[u8],
) -> Vec<u8> {
    let mut p = vec![0u8; 24];
    p[0..8].copy_from_slice(&rk.to_be_bytes());
    p[8..16].copy_from_slice(&sark.to_be_bytes());
    p[17] = (u8::from(unreg) << 1) | u8::from(aptpl);
    p[20..24].copy_from_slice(&(tid.len() as u32).to_be_bytes());
    p.extend_from_slice(tid);
    p
}

pub fn read16_cdb(lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0x88;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

/// WRITE SAME(16) (SBC-3 §5.44): one block of data-out unless NDOB.
pub fn write_same16_cdb(lba: u64, blocks: u32, unmap: bool, ndob: bool) -> [u8; 16] {
    let mut c = read16_cdb(lba, blocks);
    c[0] = 0x93;
    c[1] = if unmap { 0x08 } else { 0 } | if ndob { 0x01 } else { 0 };
    c
}

pub fn write16_cdb(lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = read16_cdb(lba, blocks);
    c[0] = 0x8a;
    c
}

/// A command made available but not yet completed (see [`ScsiClient::submit`]).
pub struct Pending {
    /// The command's virtio-scsi tag.
    pub tag: u64,
    cdb: Vec<u8>,
    head: u16,
    resp: u64,
    /// Guest-physical address of the data-in buffer.
    pub data_in: u64,
    data_in_len: usize,
}

pub struct ScsiClient {
    pub fe: VuFrontend,
    tag: u64,
}

impl ScsiClient {
    /// Control, event and one request queue.
    pub fn connect(socket: &Path) -> ScsiClient {
        Self::connect_queues(socket, 1, QUEUE_SIZE)
    }

    /// Control, event and `request_queues` request queues of `queue_size` entries.
    pub fn connect_queues(socket: &Path, request_queues: usize, queue_size: u16) -> ScsiClient {
        ScsiClient {
            fe: VuFrontend::connect(socket, 2 + request_queues, queue_size),
            tag: 0,
        }
    }

    /// Like [`ScsiClient::connect`], returning setup errors instead (a daemon being restarted).
    pub fn try_connect(socket: &Path) -> Result<ScsiClient, String> {
        Ok(ScsiClient {
            fe: VuFrontend::try_connect(socket, 3, QUEUE_SIZE)?,
            tag: 0,
        })
    }

    pub fn next_tag(&mut self) -> u64 {
        self.tag += 1;
        self.tag
    }

    /// One command on LUN 0 of target 0.
    pub fn cmd(&mut self, cdb: &[u8], data_out: &[u8], data_in_len: usize) -> ScsiResult {
        self.cmd_lun(&LUN0, cdb, data_out, data_in_len)
    }

    pub fn cmd_lun(
        &mut self,
        lun: &[u8; 8],
        cdb: &[u8],
        data_out: &[u8],
        data_in_len: usize,
    ) -> ScsiResult {
        self.fe.reset();
        let p = self.submit(lun, cdb, data_out, data_in_len, true);
        let r = self
            .finish(&p, TIMEOUT)
            .unwrap_or_else(|| panic!("SCSI command {cdb:02x?} not completed"));
        self.fe.reset();
        r
    }

    /// Builds a command in fresh buffers and makes it available on the request queue, with a
    /// kick or without one (then it waits in the ring until the backend looks).
    pub fn submit(
        &mut self,
        lun: &[u8; 8],
        cdb: &[u8],
        data_out: &[u8],
        data_in_len: usize,
        kick: bool,
    ) -> Pending {
        let tag = self.next_tag();
        let fe = &mut self.fe;
        let hdr = fe.alloc(REQ_HEADER_LEN);
        fe.write_mem(hdr, &req_header(lun, tag, cdb));
        let mut descs = vec![Desc::r(hdr, REQ_HEADER_LEN as u32)];
        if !data_out.is_empty() {
            let out = fe.alloc(data_out.len());
            fe.write_mem(out, data_out);
            descs.push(Desc::r(out, data_out.len() as u32));
        }
        let resp = fe.alloc(RESP_LEN);
        fe.write_mem(resp, &[0xee; RESP_LEN]);
        descs.push(Desc::w(resp, RESP_LEN as u32));
        let data_in = fe.alloc(data_in_len);
        if data_in_len > 0 {
            descs.push(Desc::w(data_in, data_in_len as u32));
        }
        let head = if kick {
            fe.submit(REQUEST_Q, &descs)
        } else {
            fe.submit_without_kick(REQUEST_Q, &descs)
        };
        Pending {
            tag,
            cdb: cdb.to_vec(),
            head,
            resp,
            data_in,
            data_in_len,
        }
    }

    /// Waits up to `timeout` for the completion of `p`, the oldest command in flight.
    pub fn finish(&mut self, p: &Pending, timeout: Duration) -> Option<ScsiResult> {
        let (id, used_len) = self.fe.wait_used(REQUEST_Q, timeout)?;
        let fe = &self.fe;
        assert_eq!(id, p.head, "completion for another chain");
        assert!(
            used_len as usize >= RESP_LEN && used_len as usize <= RESP_LEN + p.data_in_len,
            "used length {used_len} for {} data-in bytes ({:02x?})",
            p.data_in_len,
            p.cdb
        );
        let (response, status, sense, resid) = parse_resp(&fe.read_mem(p.resp, RESP_LEN));
        let data = fe.read_mem(p.data_in, used_len as usize - RESP_LEN);
        Some(ScsiResult {
            response,
            status,
            sense,
            resid,
            data,
            used_len,
        })
    }

    pub fn tur(&mut self) -> ScsiResult {
        self.cmd(&[0, 0, 0, 0, 0, 0], &[], 0)
    }

    /// TEST UNIT READY until GOOD (at most 10 times); returns the UAs reported on the way.
    pub fn drain_ua(&mut self) -> Vec<SenseTriple> {
        let mut seen = Vec::new();
        for _ in 0..10 {
            let r = self.tur();
            if r.is_good() {
                return seen;
            }
            assert_eq!(r.status, CHECK_CONDITION, "TUR: {r:?}");
            let s = r.sense.expect("CHECK CONDITION without sense");
            assert_eq!(s.0, 6, "TUR failed with something other than a UA: {r:?}");
            seen.push(s);
        }
        panic!("unit attentions never drained: {seen:02x?}");
    }

    pub fn prout(&mut self, sa: u8, typ: u8, rk: u64, sark: u64, aptpl: bool) -> ScsiResult {
        let flags = if aptpl { FLAG_APTPL } else { 0 };
        self.prout_flags(sa, typ, rk, sark, flags)
    }

    pub fn prout_flags(&mut self, sa: u8, typ: u8, rk: u64, sark: u64, flags: u8) -> ScsiResult {
        self.prout_raw(&prout_cdb(sa, typ, 24), &prout_params(rk, sark, flags))
    }

    pub fn prout_raw(&mut self, cdb: &[u8], params: &[u8]) -> ScsiResult {
        self.cmd(cdb, params, 0)
    }

    /// REGISTER AND MOVE to the guest named `to`.
    pub fn register_and_move(&mut self, rk: u64, sark: u64, unreg: bool, to: &str) -> ScsiResult {
        let p = register_and_move_params(rk, sark, unreg, false, &iscsi_tid(&guest_iqn(to)));
        self.prout_raw(&prout_cdb(SA_REGISTER_AND_MOVE, 0, p.len() as u32), &p)
    }

    pub fn prin_cdb(sa: u8, alloc_len: u16) -> [u8; 10] {
        let mut c = [0u8; 10];
        c[0] = 0x5e;
        c[1] = sa;
        c[7..9].copy_from_slice(&alloc_len.to_be_bytes());
        c
    }

    pub fn prin(&mut self, sa: u8, alloc_len: u16) -> ScsiResult {
        self.cmd(&Self::prin_cdb(sa, alloc_len), &[], alloc_len as usize)
    }

    fn prin_ok(&mut self, sa: u8) -> Vec<u8> {
        let r = self.prin(sa, 8192);
        assert!(r.is_good(), "PR IN {sa}: {r:?}");
        r.data
    }

    /// READ KEYS: (PRgeneration, keys).
    pub fn read_keys(&mut self) -> (u32, Vec<u64>) {
        let d = self.prin_ok(PRIN_READ_KEYS);
        let gen = u32::from_be_bytes(d[0..4].try_into().unwrap());
        let len = u32::from_be_bytes(d[4..8].try_into().unwrap()) as usize;
        assert_eq!(len % 8, 0);
        assert_eq!(d.len(), 8 + len, "READ KEYS data length");
        let keys = d[8..]
            .chunks(8)
            .map(|c| u64::from_be_bytes(c.try_into().unwrap()))
            .collect();
        (gen, keys)
    }

    /// READ RESERVATION: (PRgeneration, Some((key, type))).
    pub fn read_reservation(&mut self) -> (u32, Option<(u64, u8)>) {
        let d = self.prin_ok(PRIN_READ_RESERVATION);
        let gen = u32::from_be_bytes(d[0..4].try_into().unwrap());
        let len = u32::from_be_bytes(d[4..8].try_into().unwrap());
        match len {
            0 => {
                assert_eq!(d.len(), 8);
                (gen, None)
            }
            16 => {
                assert_eq!(d.len(), 24);
                let key = u64::from_be_bytes(d[8..16].try_into().unwrap());
                assert_eq!(d[21] >> 4, 0, "scope is LU_SCOPE");
                (gen, Some((key, d[21] & 0x0f)))
            }
            n => panic!("READ RESERVATION ADDITIONAL LENGTH {n}"),
        }
    }

    pub fn generation(&mut self) -> u32 {
        self.read_keys().0
    }

    /// READ FULL STATUS: (PRgeneration, descriptors).
    pub fn read_full_status(&mut self) -> (u32, Vec<FullStatus>) {
        let d = self.prin_ok(PRIN_READ_FULL_STATUS);
        let gen = u32::from_be_bytes(d[0..4].try_into().unwrap());
        let len = u32::from_be_bytes(d[4..8].try_into().unwrap()) as usize;
        assert_eq!(d.len(), 8 + len);
        let mut out = Vec::new();
        let mut p = &d[8..];
        while !p.is_empty() {
            assert!(p.len() >= 24, "truncated full status descriptor");
            let tid_len = u32::from_be_bytes(p[20..24].try_into().unwrap()) as usize;
            out.push(FullStatus {
                key: u64::from_be_bytes(p[0..8].try_into().unwrap()),
                flags: p[12],
                scope_type: p[13],
                rel_port: u16::from_be_bytes([p[18], p[19]]),
                tid: p[24..24 + tid_len].to_vec(),
            });
            p = &p[24 + tid_len..];
        }
        (gen, out)
    }

    pub fn read16(&mut self, lba: u64, blocks: u32) -> ScsiResult {
        self.cmd(&read16_cdb(lba, blocks), &[], blocks as usize * 512)
    }

    pub fn write16(&mut self, lba: u64, data: &[u8]) -> ScsiResult {
        assert_eq!(data.len() % 512, 0);
        self.cmd(&write16_cdb(lba, (data.len() / 512) as u32), data, 0)
    }

    /// The caching mode page (08h) as MODE SENSE(6) reports it (current values).
    pub fn caching_page(&mut self) -> Vec<u8> {
        let r = self.cmd(&[0x1a, 0x08, 0x08, 0, 255, 0], &[], 255);
        assert!(r.is_good(), "MODE SENSE caching page: {r:?}");
        assert!(r.data.len() >= 4 + 20, "MODE SENSE data: {:02x?}", r.data);
        assert_eq!(r.data[3], 0, "DBD=1: no block descriptors");
        r.data[4..4 + 2 + r.data[5] as usize].to_vec()
    }

    /// WCE of the caching mode page.
    pub fn wce(&mut self) -> bool {
        self.caching_page()[2] & 0x04 != 0
    }

    /// MODE SELECT(6), PF=1, of the caching page with WCE set to `on`.
    pub fn mode_select_wce(&mut self, on: bool) -> ScsiResult {
        let mut page = self.caching_page();
        page[0] &= 0x3f; // PS is reserved in MODE SELECT
        page[2] = (page[2] & !0x04) | if on { 0x04 } else { 0 };
        let mut list = vec![0u8; 4];
        list.extend_from_slice(&page);
        self.cmd(&[0x15, 0x10, 0, 0, list.len() as u8, 0], &list, 0)
    }

    /// One TMF request on the control queue; returns the response byte.
    pub fn tmf(&mut self, subtype: u32, lun: &[u8; 8]) -> u8 {
        self.fe.reset();
        let v = self.tmf_for(subtype, lun, 7);
        self.fe.reset();
        v
    }

    /// A TMF naming task `tag`, sent while commands are in flight (the rings are not reset).
    pub fn tmf_for(&mut self, subtype: u32, lun: &[u8; 8], tag: u64) -> u8 {
        let fe = &mut self.fe;
        let req = fe.alloc(24);
        let mut r = [0u8; 24];
        // type VIRTIO_SCSI_T_TMF = 0
        r[4..8].copy_from_slice(&subtype.to_le_bytes());
        r[8..16].copy_from_slice(lun);
        r[16..24].copy_from_slice(&tag.to_le_bytes());
        fe.write_mem(req, &r);
        let resp = fe.alloc(1);
        fe.write_mem(resp, &[0xee]);
        let head = fe.submit(CONTROL_Q, &[Desc::r(req, 24), Desc::w(resp, 1)]);
        let (id, len) = fe.wait_used(CONTROL_Q, TIMEOUT).expect("TMF not completed");
        assert_eq!(id, head);
        assert_eq!(len, 1, "TMF response length");
        fe.read_mem(resp, 1)[0]
    }
}

/// One READ FULL STATUS descriptor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FullStatus {
    pub key: u64,
    /// Byte 12: ALL_TG_PT (bit 1), R_HOLDER (bit 0).
    pub flags: u8,
    pub scope_type: u8,
    pub rel_port: u16,
    pub tid: Vec<u8>,
}

impl FullStatus {
    pub fn holder(&self) -> bool {
        self.flags & 1 != 0
    }
}
