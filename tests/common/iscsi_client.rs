//! A small synchronous iSCSI initiator (RFC 7143) written for the tests: login with chosen keys
//! and ISID, one SCSI command at a time (immediate data, R2T-solicited Data-Out, Data-In,
//! SCSI Response with sense), logout, and raw PDUs for hostile-initiator tests. Its results are
//! [`ScsiResult`]s, so the scsi_client assertions apply to both transports.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use super::scsi_client::{ScsiResult, SenseTriple};

pub const LOGIN: u8 = 0x03;
pub const SCSI_CMD: u8 = 0x01;
pub const DATA_OUT: u8 = 0x05;
pub const NOP_OUT: u8 = 0x00;
pub const LOGOUT: u8 = 0x06;

/// libiscsi's test initiator names, which the conformance runs allow.
pub const INITIATOR_A: &str = "iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test";
pub const INITIATOR_B: &str = "iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test-2";

/// One PDU as the client reads it: header and data (no digests).
#[derive(Clone, Debug)]
pub struct RawPdu {
    pub bhs: [u8; 48],
    pub data: Vec<u8>,
}

impl RawPdu {
    pub fn opcode(&self) -> u8 {
        self.bhs[0] & 0x3f
    }
    pub fn u32_at(&self, at: usize) -> u32 {
        u32::from_be_bytes(self.bhs[at..at + 4].try_into().unwrap())
    }
}

/// A free TCP port on 127.0.0.1 for a portal.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct IscsiClient {
    pub stream: TcpStream,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    itt: u32,
    pub isid: [u8; 6],
    pub tsih: u16,
    /// The target's answers to the login's keys.
    pub answers: Vec<(String, String)>,
    /// CRC32C header and data digests, as the login negotiated them.
    pub header_digest: bool,
    pub data_digest: bool,
}

/// Encodes `key=value\0` pairs.
pub fn text(keys: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in keys {
        out.extend_from_slice(format!("{k}={v}\0").as_bytes());
    }
    out
}

fn parse_text(d: &[u8]) -> Vec<(String, String)> {
    d.split(|&b| b == 0)
        .filter(|p| !p.is_empty())
        .filter_map(|p| {
            let s = String::from_utf8_lossy(p);
            s.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect()
}

impl IscsiClient {
    /// A Normal session of `initiator` to `target` with `isid`: Ok, or the login status.
    pub fn login(
        addr: SocketAddr,
        initiator: &str,
        target: &str,
        isid: [u8; 6],
    ) -> Result<Self, u16> {
        let mut c = Self::connect(addr, isid);
        c.login_normal(initiator, target)?;
        Ok(c)
    }

    /// The login of a Normal session of `initiator` to `target` on this connection, with the
    /// keys of [`IscsiClient::login`].
    pub fn login_normal(&mut self, initiator: &str, target: &str) -> Result<(), u16> {
        let keys = [
            ("InitiatorName", initiator),
            ("TargetName", target),
            ("SessionType", "Normal"),
            ("AuthMethod", "None"),
        ];
        let op = [
            ("HeaderDigest", "None"),
            ("DataDigest", "None"),
            ("InitialR2T", "Yes"),
            ("ImmediateData", "Yes"),
            ("MaxBurstLength", "262144"),
            ("FirstBurstLength", "65536"),
            ("MaxRecvDataSegmentLength", "65536"),
            ("ErrorRecoveryLevel", "0"),
            ("MaxConnections", "1"),
        ];
        self.log_in(&keys, &op)
    }

    /// A login in two stages: `security` keys (CSG 0 → 1), then `operational` (CSG 1 → 3).
    pub fn login_with(
        addr: SocketAddr,
        security: &[(&str, &str)],
        operational: &[(&str, &str)],
        isid: [u8; 6],
    ) -> Result<Self, u16> {
        let mut c = Self::connect(addr, isid);
        c.log_in(security, operational)?;
        Ok(c)
    }

    /// [`IscsiClient::login_with`]'s two stages on this connection.
    pub fn log_in(
        &mut self,
        security: &[(&str, &str)],
        operational: &[(&str, &str)],
    ) -> Result<(), u16> {
        self.login_stage(0x80 | 1, &text(security))?;
        self.login_stage(0x80 | (1 << 2) | 3, &text(operational))?;
        self.header_digest = self.answer("HeaderDigest") == Some("CRC32C");
        self.data_digest = self.answer("DataDigest") == Some("CRC32C");
        Ok(())
    }

    /// A connection to the portal, not logged in: drive the login with
    /// [`IscsiClient::login_request`].
    pub fn connect(addr: SocketAddr, isid: [u8; 6]) -> Self {
        Self::on(
            TcpStream::connect(addr).expect("connect to the portal"),
            isid,
        )
    }

    /// A connection to the portal from the local address `source` (another loopback address:
    /// another client host, as the portal sees it), not logged in.
    pub fn connect_from(addr: SocketAddr, source: std::net::Ipv4Addr, isid: [u8; 6]) -> Self {
        Self::on(tcp_from(addr, source), isid)
    }

    fn on(stream: TcpStream, isid: [u8; 6]) -> Self {
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        IscsiClient {
            stream,
            cmd_sn: 1,
            exp_stat_sn: 0,
            itt: 0,
            isid,
            tsih: 0,
            answers: Vec::new(),
            header_digest: false,
            data_digest: false,
        }
    }

    /// One login request with `flags` (T, C, CSG, NSG) and `keys`: the response's flags and
    /// keys, or its non-zero status.
    pub fn login_request(
        &mut self,
        flags: u8,
        keys: &[(&str, &str)],
    ) -> Result<(u8, Vec<(String, String)>), u16> {
        let before = self.answers.len();
        let flags_back = self.login_stage_flags(flags, &text(keys))?;
        Ok((flags_back, self.answers[before..].to_vec()))
    }

    /// One login request with `flags` (T, CSG, NSG); Err: a non-zero status.
    fn login_stage(&mut self, flags: u8, data: &[u8]) -> Result<(), u16> {
        self.login_stage_flags(flags, data).map(|_| ())
    }

    /// [`IscsiClient::login_stage`], returning the response's flags.
    fn login_stage_flags(&mut self, flags: u8, data: &[u8]) -> Result<u8, u16> {
        let mut b = [0u8; 48];
        b[0] = 0x40 | LOGIN;
        b[1] = flags;
        b[8..14].copy_from_slice(&self.isid);
        b[14..16].copy_from_slice(&self.tsih.to_be_bytes());
        b[16..20].copy_from_slice(&self.next_itt().to_be_bytes());
        b[24..28].copy_from_slice(&self.cmd_sn.to_be_bytes());
        b[28..32].copy_from_slice(&self.exp_stat_sn.to_be_bytes());
        self.send(b, data);
        let r = self.read().ok_or(0xffff_u16)?;
        let status = u16::from_be_bytes([r.bhs[36], r.bhs[37]]);
        if status != 0 {
            return Err(status);
        }
        self.exp_stat_sn = r.u32_at(24).wrapping_add(1);
        self.tsih = u16::from_be_bytes([r.bhs[14], r.bhs[15]]);
        self.answers.extend(parse_text(&r.data));
        Ok(r.bhs[1])
    }

    /// The answer to `key` at login.
    pub fn answer(&self, key: &str) -> Option<&str> {
        self.answers
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn next_itt(&mut self) -> u32 {
        self.itt += 1;
        self.itt
    }

    /// Writes a PDU with DataSegmentLength set from `data`, padded.
    pub fn send(&mut self, mut bhs: [u8; 48], data: &[u8]) {
        let len = data.len();
        bhs[5] = (len >> 16) as u8;
        bhs[6] = (len >> 8) as u8;
        bhs[7] = len as u8;
        let mut out = bhs.to_vec();
        if self.header_digest {
            out.extend_from_slice(&crc32c::crc32c(&bhs).to_le_bytes());
        }
        let start = out.len();
        out.extend_from_slice(data);
        out.resize(start + len.div_ceil(4) * 4, 0);
        if self.data_digest && len > 0 {
            let crc = crc32c::crc32c(&out[start..]);
            out.extend_from_slice(&crc.to_le_bytes());
        }
        let _ = self.stream.write_all(&out);
    }

    /// Reads a PDU; `None` when the target closed the connection (or it timed out).
    pub fn read(&mut self) -> Option<RawPdu> {
        let mut bhs = [0u8; 48];
        self.stream.read_exact(&mut bhs).ok()?;
        let mut digest = [0u8; 4];
        if self.header_digest {
            self.stream.read_exact(&mut digest).ok()?;
            assert_eq!(
                u32::from_le_bytes(digest),
                crc32c::crc32c(&bhs),
                "header digest"
            );
        }
        let len = (usize::from(bhs[5]) << 16) | (usize::from(bhs[6]) << 8) | usize::from(bhs[7]);
        let mut data = vec![0u8; len.div_ceil(4) * 4 + usize::from(bhs[4]) * 4];
        self.stream.read_exact(&mut data).ok()?;
        if self.data_digest && len > 0 {
            self.stream.read_exact(&mut digest).ok()?;
            assert_eq!(
                u32::from_le_bytes(digest),
                crc32c::crc32c(&data),
                "data digest"
            );
        }
        data.truncate(len);
        Some(RawPdu { bhs, data })
    }

    /// A SCSI Command header for `cdb` with `edtl`, read/write flags, the next CmdSN.
    pub fn cmd_header(&mut self, cdb: &[u8], edtl: u32, read: bool, write: bool) -> [u8; 48] {
        let mut b = [0u8; 48];
        b[0] = SCSI_CMD;
        b[1] = 0x80 | if read { 0x40 } else { 0 } | if write { 0x20 } else { 0 } | 1;
        b[16..20].copy_from_slice(&self.next_itt().to_be_bytes());
        b[20..24].copy_from_slice(&edtl.to_be_bytes());
        b[24..28].copy_from_slice(&self.cmd_sn.to_be_bytes());
        b[28..32].copy_from_slice(&self.exp_stat_sn.to_be_bytes());
        b[32..32 + cdb.len()].copy_from_slice(cdb);
        self.cmd_sn = self.cmd_sn.wrapping_add(1);
        b
    }

    /// One command on LUN 0: immediate data up to 64 KiB, the rest on R2T; `None` when the
    /// connection closed before the status came.
    pub fn try_cmd(
        &mut self,
        cdb: &[u8],
        data_out: &[u8],
        data_in_len: usize,
    ) -> Option<ScsiResult> {
        let write = !data_out.is_empty();
        let edtl = if write { data_out.len() } else { data_in_len } as u32;
        let b = self.cmd_header(cdb, edtl, data_in_len > 0, write);
        let imm = data_out.len().min(65536);
        self.send(b, &data_out[..imm]);
        self.finish(data_out)
    }

    /// Reads until the status of the command in flight, answering R2Ts from `data_out`.
    pub fn finish(&mut self, data_out: &[u8]) -> Option<ScsiResult> {
        let mut data = Vec::new();
        loop {
            let p = self.read()?;
            match p.opcode() {
                0x25 => {
                    data.extend_from_slice(&p.data);
                    if p.bhs[1] & 0x01 != 0 {
                        self.exp_stat_sn = p.u32_at(24).wrapping_add(1);
                        return Some(result(p.bhs[3], None, p.u32_at(44), data));
                    }
                }
                0x21 => {
                    self.exp_stat_sn = p.u32_at(24).wrapping_add(1);
                    let sense =
                        (p.data.len() >= 16).then(|| (p.data[4] & 0x0f, p.data[14], p.data[15]));
                    return Some(result(p.bhs[3], sense, p.u32_at(44), data));
                }
                0x31 => self.answer_r2t(&p, data_out),
                other => panic!("unexpected PDU opcode {other:#x} while a command was in flight"),
            }
        }
    }

    /// Sends the Data-Out an R2T asks for, in 64 KiB PDUs.
    pub fn answer_r2t(&mut self, r2t: &RawPdu, data_out: &[u8]) {
        let (ttt, off, len) = (
            r2t.u32_at(20),
            r2t.u32_at(40) as usize,
            r2t.u32_at(44) as usize,
        );
        let mut sent = 0;
        let mut data_sn = 0u32;
        while sent < len {
            let n = (len - sent).min(65536);
            let mut b = [0u8; 48];
            b[0] = DATA_OUT;
            b[1] = if sent + n == len { 0x80 } else { 0 };
            b[16..20].copy_from_slice(&r2t.bhs[16..20]);
            b[20..24].copy_from_slice(&ttt.to_be_bytes());
            b[28..32].copy_from_slice(&self.exp_stat_sn.to_be_bytes());
            b[36..40].copy_from_slice(&data_sn.to_be_bytes());
            b[40..44].copy_from_slice(&((off + sent) as u32).to_be_bytes());
            self.send(b, &data_out[off + sent..off + sent + n]);
            sent += n;
            data_sn += 1;
        }
    }

    #[track_caller]
    pub fn cmd(&mut self, cdb: &[u8], data_out: &[u8], data_in_len: usize) -> ScsiResult {
        self.try_cmd(cdb, data_out, data_in_len)
            .expect("the target closed the connection before the status")
    }

    /// TEST UNIT READY until it passes: the unit attentions a new nexus has, in order.
    pub fn drain_ua(&mut self) -> Vec<SenseTriple> {
        let mut uas = Vec::new();
        for _ in 0..20 {
            let r = self.cmd(&[0u8; 6], &[], 0);
            match r.sense {
                Some(s) if s.0 == 0x06 => uas.push(s),
                _ => return uas,
            }
        }
        panic!("unit attentions never ended: {uas:?}");
    }

    pub fn prout(&mut self, sa: u8, typ: u8, rk: u64, sark: u64) -> ScsiResult {
        let cdb = super::scsi_client::prout_cdb(sa, typ, 24);
        let params = super::scsi_client::prout_params(rk, sark, 0);
        self.cmd(&cdb, &params, 0)
    }

    pub fn read16(&mut self, lba: u64, blocks: u32) -> ScsiResult {
        self.cmd(
            &super::scsi_client::read16_cdb(lba, blocks),
            &[],
            blocks as usize * 512,
        )
    }

    pub fn write16(&mut self, lba: u64, data: &[u8]) -> ScsiResult {
        self.cmd(
            &super::scsi_client::write16_cdb(lba, (data.len() / 512) as u32),
            data,
            0,
        )
    }

    /// READ KEYS: the registered keys.
    pub fn read_keys(&mut self) -> Vec<u64> {
        let cdb = super::scsi_client::ScsiClient::prin_cdb(0, 4096);
        let r = self.cmd(&cdb, &[], 4096);
        assert_eq!(r.status, 0, "READ KEYS: {r:?}");
        let len = u32::from_be_bytes(r.data[4..8].try_into().unwrap()) as usize;
        r.data[8..8 + len]
            .chunks(8)
            .map(|k| u64::from_be_bytes(k.try_into().unwrap()))
            .collect()
    }

    /// An immediate PDU with `opcode` and `flags` and the current numbers; its answer.
    pub fn immediate(
        &mut self,
        opcode: u8,
        flags: u8,
        data: &[u8],
        f: impl Fn(&mut [u8; 48]),
    ) -> Option<RawPdu> {
        let mut b = [0u8; 48];
        b[0] = 0x40 | opcode;
        b[1] = flags;
        b[16..20].copy_from_slice(&self.next_itt().to_be_bytes());
        b[24..28].copy_from_slice(&self.cmd_sn.to_be_bytes());
        b[28..32].copy_from_slice(&self.exp_stat_sn.to_be_bytes());
        f(&mut b);
        self.send(b, data);
        let r = self.read()?;
        self.exp_stat_sn = r.u32_at(24).wrapping_add(1);
        Some(r)
    }

    /// A task management function (RFC 7143 §11.5) on LUN 0: its response code.
    pub fn tmf(&mut self, function: u8) -> u8 {
        let r = self
            .immediate(0x02, 0x80 | function, &[], |b| {
                b[20..24].copy_from_slice(&0xffff_ffffu32.to_be_bytes());
            })
            .expect("a TMF response");
        assert_eq!(r.opcode(), 0x22, "TMF response");
        r.bhs[2]
    }

    /// Logout (close the session); true when the target answered.
    pub fn logout(&mut self) -> bool {
        let mut b = [0u8; 48];
        b[0] = 0x40 | LOGOUT;
        b[1] = 0x80;
        b[16..20].copy_from_slice(&self.next_itt().to_be_bytes());
        b[24..28].copy_from_slice(&self.cmd_sn.to_be_bytes());
        b[28..32].copy_from_slice(&self.exp_stat_sn.to_be_bytes());
        self.send(b, &[]);
        self.read().is_some_and(|p| p.opcode() == 0x26)
    }
}

fn result(status: u8, sense: Option<SenseTriple>, resid: u32, data: Vec<u8>) -> ScsiResult {
    ScsiResult {
        response: 0,
        status,
        sense,
        resid,
        used_len: data.len() as u32,
        data,
    }
}

/// The target name a daemon serves, from its log line `iscsi: target NAME on ...` (waited for
/// up to 10 s).
pub fn served_target(d: &super::process::DaemonProcess) -> String {
    super::logs::word_after(|| d.log(), TARGET_LOGGED, Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no iscsi target in the log: {}", d.log()))
}

/// What a daemon logs before the target name it serves.
pub const TARGET_LOGGED: &str = "iscsi: target ";

/// A TCP connection to `addr` from `source` (IPv4): std binds only on connect.
pub fn tcp_from(addr: SocketAddr, source: std::net::Ipv4Addr) -> TcpStream {
    use std::os::fd::FromRawFd;
    let SocketAddr::V4(to) = addr else {
        panic!("an IPv4 portal");
    };
    let sin = |ip: std::net::Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let (from, to) = (sin(source, 0), sin(*to.ip(), to.port()));
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: a new socket; `from` and `to` are valid sockaddr_in of `len` bytes for the calls;
    // the descriptor is owned by the TcpStream made of it (or closed on failure).
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let bound = libc::bind(fd, (&from as *const libc::sockaddr_in).cast(), len) == 0
            && libc::connect(fd, (&to as *const libc::sockaddr_in).cast(), len) == 0;
        if !bound {
            let e = std::io::Error::last_os_error();
            libc::close(fd);
            panic!("connect from {source} to {addr}: {e}");
        }
        TcpStream::from_raw_fd(fd)
    }
}
