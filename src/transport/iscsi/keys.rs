//! Text keys (RFC 7143 §6, §13): `key=value` pairs separated by NULs, and the operational
//! negotiation of the profile this target serves (ERL 0, one connection, in-order data).

use super::pdu::Digests;

/// The longest key name (RFC 7143 §6.1: 63 bytes).
const MAX_KEY: usize = 63;
/// The longest value we accept (RFC 7143 §6.1: 255 bytes for most keys, 8192 at most).
const MAX_VALUE: usize = 8192;

/// What this target receives in one PDU (MaxRecvDataSegmentLength it declares).
pub const OUR_MRDSL: usize = 262_144;
/// The largest MaxBurstLength this target agrees to.
const OUR_MAX_BURST: usize = 1 << 20;
/// The largest FirstBurstLength this target agrees to.
const OUR_FIRST_BURST: usize = 262_144;

/// Session and connection parameters after negotiation; the RFC's defaults for keys the
/// initiator did not offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    pub digests: Digests,
    /// The initiator's MaxRecvDataSegmentLength: caps our Data-In, Text and NOP-In data.
    pub their_mrdsl: usize,
    pub max_burst: usize,
    pub first_burst: usize,
    pub initial_r2t: bool,
    pub immediate_data: bool,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            digests: Digests::default(),
            their_mrdsl: 8192,
            max_burst: 262_144,
            first_burst: 65_536,
            initial_r2t: true,
            immediate_data: true,
        }
    }
}

/// Splits `text` into its `key=value` pairs; `None` for a malformed list (a pair without `=`,
/// a key or value too long, not UTF-8).
pub fn parse(text: &[u8]) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    for pair in text.split(|&b| b == 0).filter(|p| !p.is_empty()) {
        let pair = std::str::from_utf8(pair).ok()?;
        let (k, v) = pair.split_once('=')?;
        if k.is_empty() || k.len() > MAX_KEY || v.len() > MAX_VALUE {
            return None;
        }
        out.push((k.to_string(), v.to_string()));
    }
    Some(out)
}

/// Encodes pairs as `key=value\0…`.
pub fn encode(pairs: &[(String, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(b'=');
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

fn number(v: &str) -> Option<usize> {
    let n = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(h) => usize::from_str_radix(h, 16).ok()?,
        None => v.parse().ok()?,
    };
    Some(n)
}

fn yes_no(v: &str) -> Option<bool> {
    match v {
        "Yes" => Some(true),
        "No" => Some(false),
        _ => None,
    }
}

fn show(b: bool) -> String {
    if b { "Yes" } else { "No" }.into()
}

/// Picks the first value of an offered digest list we support (CRC32C or None).
fn digest(v: &str) -> Option<(bool, &'static str)> {
    v.split(',').find_map(|d| match d {
        "CRC32C" => Some((true, "CRC32C")),
        "None" => Some((false, "None")),
        _ => None,
    })
}

/// A bounded number between `lo` and `hi`, else `None`.
fn ranged(v: &str, lo: usize, hi: usize) -> Option<usize> {
    number(v).filter(|n| (lo..=hi).contains(n))
}

/// Answers one operational key the initiator offered and records the result in `p`. `None`:
/// a declarative key that needs no answer. Values out of range answer `Reject`; unknown keys
/// `NotUnderstood` (RFC 7143 §6.2).
pub fn negotiate(key: &str, value: &str, p: &mut Params) -> Option<String> {
    let reject = || Some("Reject".to_string());
    match key {
        "HeaderDigest" | "DataDigest" => match digest(value) {
            Some((on, name)) => {
                if key == "HeaderDigest" {
                    p.digests.header = on;
                } else {
                    p.digests.data = on;
                }
                Some(name.into())
            }
            None => reject(),
        },
        "MaxRecvDataSegmentLength" => match ranged(value, 512, (1 << 24) - 1) {
            Some(n) => {
                p.their_mrdsl = n;
                None
            }
            None => reject(),
        },
        "MaxBurstLength" => ranged(value, 512, (1 << 24) - 1).map_or_else(reject, |n| {
            p.max_burst = n.min(OUR_MAX_BURST);
            p.first_burst = p.first_burst.min(p.max_burst);
            Some(p.max_burst.to_string())
        }),
        "FirstBurstLength" => ranged(value, 512, (1 << 24) - 1).map_or_else(reject, |n| {
            p.first_burst = n.min(OUR_FIRST_BURST).min(p.max_burst);
            Some(p.first_burst.to_string())
        }),
        // OR: ours is No, so the result is the initiator's.
        "InitialR2T" => yes_no(value).map_or_else(reject, |b| {
            p.initial_r2t = b;
            Some(show(b))
        }),
        // AND: ours is Yes, so the result is the initiator's.
        "ImmediateData" => yes_no(value).map_or_else(reject, |b| {
            p.immediate_data = b;
            Some(show(b))
        }),
        // Minimum with ours: one connection, one R2T, ERL 0, nothing retained.
        "MaxConnections" | "MaxOutstandingR2T" => {
            ranged(value, 1, 65535).map_or_else(reject, |_| Some("1".into()))
        }
        "ErrorRecoveryLevel" | "DefaultTime2Retain" => {
            ranged(value, 0, 3600).map_or_else(reject, |_| Some("0".into()))
        }
        "DefaultTime2Wait" => {
            ranged(value, 0, 3600).map_or_else(reject, |n| Some(n.max(2).to_string()))
        }
        // OR with ours (Yes): in-order data only.
        "DataPDUInOrder" | "DataSequenceInOrder" => {
            yes_no(value).map_or_else(reject, |_| Some("Yes".into()))
        }
        "IFMarker" | "OFMarker" => Some("No".into()),
        "IFMarkInt" | "OFMarkInt" => reject(),
        "iSCSIProtocolLevel" => {
            ranged(value, 0, 31).map_or_else(reject, |n| Some(n.min(1).to_string()))
        }
        "TaskReporting" => Some("RFC3720".into()),
        // Declarative keys of the initiator, or keys the login itself handles.
        "InitiatorAlias" | "InitiatorName" | "TargetName" | "SessionType" | "AuthMethod" => None,
        _ => Some("NotUnderstood".into()),
    }
}
