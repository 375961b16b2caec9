use super::keys::{self, negotiate, Params};
use super::nexus_name;
use super::pdu::{self, read_pdu, write_pdu, Digests, PduError};

#[test]
fn crc32c_is_castagnoli() {
    // RFC 3720 appendix B.4: 32 bytes of zeros.
    assert_eq!(pdu::crc32c(&[&[0u8; 32]]), 0x8a91_36aa);
}

#[test]
fn pdu_round_trip_with_digests_and_padding() {
    let d = Digests {
        header: true,
        data: true,
    };
    let mut b = pdu::header(pdu::op::NOP_IN, 0x80, 7);
    pdu::put(&mut b, 24, 99);
    let mut wire = Vec::new();
    write_pdu(&mut wire, b, b"hello", d).unwrap();
    assert_eq!(wire.len(), 48 + 4 + 8 + 4);
    let p = read_pdu(&mut wire.as_slice(), d, 8192).unwrap();
    assert_eq!(p.itt(), 7);
    assert_eq!(p.data, b"hello");
    // A flipped data byte fails the data digest; a flipped header byte the header digest.
    let mut bad = wire.clone();
    bad[52] ^= 1;
    assert!(matches!(
        read_pdu(&mut bad.as_slice(), d, 8192),
        Err(PduError::DataDigest)
    ));
    let mut bad = wire;
    bad[20] ^= 1;
    assert!(matches!(
        read_pdu(&mut bad.as_slice(), d, 8192),
        Err(PduError::HeaderDigest)
    ));
}

#[test]
fn pdu_longer_than_declared_is_refused_before_allocation() {
    let mut b = [0u8; 48];
    b[5] = 0xff; // 16 MiB - 1 announced, nothing sent
    let r = read_pdu(&mut b.as_slice(), Digests::default(), 8192);
    assert!(matches!(r, Err(PduError::TooLong { .. })));
}

#[test]
fn keys_negotiate_the_profile() {
    let mut p = Params::default();
    let a = |k, v, p: &mut Params| negotiate(k, v, p);
    assert_eq!(
        a("HeaderDigest", "None,CRC32C", &mut p).as_deref(),
        Some("None")
    );
    assert_eq!(
        a("DataDigest", "CRC32C,None", &mut p).as_deref(),
        Some("CRC32C")
    );
    assert!(p.digests.data && !p.digests.header);
    assert_eq!(a("MaxConnections", "8", &mut p).as_deref(), Some("1"));
    assert_eq!(a("ErrorRecoveryLevel", "2", &mut p).as_deref(), Some("0"));
    assert_eq!(
        a("MaxBurstLength", "16776192", &mut p).as_deref(),
        Some("1048576")
    );
    assert_eq!(
        a("FirstBurstLength", "262144", &mut p).as_deref(),
        Some("262144")
    );
    assert_eq!(a("InitialR2T", "No", &mut p).as_deref(), Some("No"));
    assert_eq!(
        a("OFMarkInt", "2048~8192", &mut p).as_deref(),
        Some("Reject")
    );
    assert_eq!(
        a("X-com.example.Foo", "1", &mut p).as_deref(),
        Some("NotUnderstood")
    );
    assert_eq!(a("MaxRecvDataSegmentLength", "65536", &mut p), None);
    assert_eq!(p.their_mrdsl, 65536);
    assert_eq!(a("MaxBurstLength", "12", &mut p).as_deref(), Some("Reject"));
    assert!(!p.initial_r2t);
}

#[test]
fn key_text_parsing_refuses_malformed_lists() {
    let ok = keys::parse(b"InitiatorName=iqn.x\0SessionType=Normal\0").unwrap();
    assert_eq!(ok.len(), 2);
    assert!(keys::parse(b"NoEquals\0").is_none());
    let long = format!("{}=1\0", "K".repeat(64));
    assert!(keys::parse(long.as_bytes()).is_none());
    assert!(keys::parse(&[0xff, b'=', b'1', 0]).is_none());
}

#[test]
fn nexus_names_carry_the_isid() {
    let n = nexus_name(
        "IQN.1993-08.org.debian:01:node1",
        [0x80, 0x12, 0x34, 0x56, 0x78, 0x9a],
    );
    assert_eq!(n, "iqn.1993-08.org.debian:01:node1,i,0x80123456789a");
    assert!(!crate::config::valid_guest_name(&n));
}

#[test]
fn serial_arithmetic_wraps() {
    assert!(pdu::sn_lt(0xffff_fffe, 1));
    assert!(!pdu::sn_lt(1, 0xffff_fffe));
    assert!(!pdu::sn_lt(5, 5));
}
