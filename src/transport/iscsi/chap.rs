//! CHAP (RFC 1994 with MD5, as RFC 7143 §12.1.3 uses it): the target's challenge and the check
//! of the initiator's response, and the target's own response when the initiator asks for
//! mutual authentication. Binary values are `0x` hex or `0b` base64 (RFC 7143 §6.1).

use md5::{Digest, Md5};

/// CHAP_A value of MD5 (RFC 1994, the only algorithm RFC 7143 requires).
pub const MD5: &str = "5";
/// The length of the challenges this target sends (RFC 7143 §12.1.3: at least the secret's).
pub const CHALLENGE_LEN: usize = 16;
/// The longest challenge accepted from an initiator.
pub const MAX_CHALLENGE: usize = 1024;

/// One side's CHAP name and secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// What an initiator configured for CHAP authenticates with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitiatorChap {
    /// The name and secret the initiator proves it knows.
    pub initiator: Credentials,
    /// The name and secret the target answers a mutual challenge with.
    pub target: Option<Credentials>,
}

/// The CHAP response: MD5 over the identifier, the secret and the challenge (RFC 1994 §4.1).
pub fn response(id: u8, secret: &[u8], challenge: &[u8]) -> [u8; 16] {
    let mut h = Md5::new();
    h.update([id]);
    h.update(secret);
    h.update(challenge);
    h.finalize().into()
}

/// Whether two byte strings are equal, in time independent of where they differ.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// `bytes` as a `0x` hex value.
pub fn encode_hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(2 + bytes.len() * 2);
    s.push_str("0x");
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// A binary value (`0x`/`0X` hex, `0b`/`0B` base64); `None` when malformed or empty.
pub fn decode_binary(v: &str) -> Option<Vec<u8>> {
    let (prefix, rest) = (v.get(..2)?, v.get(2..)?);
    let out = match prefix {
        "0x" | "0X" => decode_hex(rest)?,
        "0b" | "0B" => decode_base64(rest)?,
        _ => return None,
    };
    (!out.is_empty()).then_some(out)
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    let digits: Vec<u8> = s
        .bytes()
        .map(|c| (c as char).to_digit(16).map(|d| d as u8))
        .collect::<Option<_>>()?;
    // An odd count: the first digit stands alone (RFC 7143 §6.1 allows it).
    let pad = digits.len() % 2;
    let mut out = Vec::with_capacity(digits.len() / 2 + pad);
    if pad == 1 {
        out.push(digits[0]);
    }
    for pair in digits[pad..].chunks(2) {
        out.push(pair[0] << 4 | pair[1]);
    }
    Some(out)
}

fn decode_base64(s: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let body = s.trim_end_matches('=');
    if s.len() - body.len() > 2 || body.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(body.len() * 3 / 4);
    for chunk in body.as_bytes().chunks(4) {
        let mut acc = 0u32;
        for &c in chunk {
            acc = acc << 6 | value(c)?;
        }
        acc <<= 6 * (4 - chunk.len() as u32);
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

/// `n` random bytes from the kernel's CSPRNG (getrandom(2)); `None` if it fails.
pub fn random_bytes(n: usize) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; n];
    let mut filled = 0;
    while filled < n {
        // SAFETY: the pointer and length describe the unfilled tail of `buf`, which lives
        // across the call; getrandom writes at most that many bytes.
        let r = unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), n - filled, 0) };
        if r < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return None;
        }
        filled += r as usize;
    }
    Some(buf)
}
