//! SCSI sense data as key/ASC/ASCQ triples, shared by the PR arbiter and the SCSI device.
//!
//! The arbiter speaks in SCSI outcomes (GOOD, RESERVATION CONFLICT, CHECK CONDITION with sense)
//! because that is the language of SPC-4; the blk path maps any non-GOOD outcome to IOERR.

/// One sense triple, reported in fixed format (SPC-4 §4.5.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Sense {
    pub key: u8,
    pub asc: u8,
    pub ascq: u8,
    /// The INFORMATION field, reported with VALID=1 (SPC-4 §4.5.3): for a miscompare, the
    /// offset of the first byte that differs (SBC-4 §5.3).
    pub information: Option<u32>,
}

impl Sense {
    pub const fn new(key: u8, asc: u8, ascq: u8) -> Self {
        Sense {
            key,
            asc,
            ascq,
            information: None,
        }
    }

    /// The same sense with an INFORMATION field.
    pub const fn with_information(self, information: u32) -> Self {
        Sense {
            information: Some(information),
            ..self
        }
    }

    /// Fixed-format sense data (response code 0x70, 18 bytes).
    pub fn to_fixed(self) -> [u8; 18] {
        let mut b = [0u8; 18];
        b[0] = 0x70;
        if let Some(info) = self.information {
            b[0] |= 0x80; // VALID
            b[3..7].copy_from_slice(&info.to_be_bytes());
        }
        b[2] = self.key & 0x0f;
        b[7] = 10; // ADDITIONAL SENSE LENGTH: bytes 8..18
        b[12] = self.asc;
        b[13] = self.ascq;
        b
    }
}

pub const NO_SENSE: Sense = Sense::new(0x00, 0x00, 0x00);
pub const INVALID_OPCODE: Sense = Sense::new(0x05, 0x20, 0x00);
pub const LBA_OUT_OF_RANGE: Sense = Sense::new(0x05, 0x21, 0x00);
pub const INVALID_FIELD_IN_CDB: Sense = Sense::new(0x05, 0x24, 0x00);
pub const LUN_NOT_SUPPORTED: Sense = Sense::new(0x05, 0x25, 0x00);
pub const INVALID_FIELD_IN_PARAM_LIST: Sense = Sense::new(0x05, 0x26, 0x00);
/// INVALID FIELD IN COMMAND INFORMATION UNIT: the transport's command contradicts its CDB (iSCSI:
/// an EDTL that ends inside a block of a WRITE's transfer).
pub const INVALID_FIELD_IN_COMMAND_IU: Sense = Sense::new(0x05, 0x0e, 0x03);
pub const INVALID_RELEASE_OF_PR: Sense = Sense::new(0x05, 0x26, 0x04);
pub const PARAM_LIST_LENGTH_ERROR: Sense = Sense::new(0x05, 0x1a, 0x00);
pub const INSUFFICIENT_REGISTRATION_RESOURCES: Sense = Sense::new(0x05, 0x55, 0x04);
pub const WRITE_PROTECTED: Sense = Sense::new(0x07, 0x27, 0x00);
pub const MEDIUM_ERROR_UNRECOVERED_READ: Sense = Sense::new(0x03, 0x11, 0x00);
pub const WRITE_ERROR: Sense = Sense::new(0x03, 0x0c, 0x00);
pub const POWER_ON_RESET: Sense = Sense::new(0x06, 0x29, 0x00);
/// LOGICAL UNIT RESET, for every I_T nexus (SAM-5 §6.3.3).
pub const BUS_DEVICE_RESET_FUNCTION_OCCURRED: Sense = Sense::new(0x06, 0x29, 0x03);
/// I_T NEXUS RESET, for that I_T nexus (SAM-5 §6.3.4).
pub const I_T_NEXUS_LOSS_OCCURRED: Sense = Sense::new(0x06, 0x29, 0x07);
pub const RESERVATIONS_PREEMPTED: Sense = Sense::new(0x06, 0x2a, 0x03);
pub const RESERVATIONS_RELEASED: Sense = Sense::new(0x06, 0x2a, 0x04);
pub const REGISTRATIONS_PREEMPTED: Sense = Sense::new(0x06, 0x2a, 0x05);
pub const PARAMETERS_CHANGED: Sense = Sense::new(0x06, 0x2a, 0x00);
pub const MODE_PARAMETERS_CHANGED: Sense = Sense::new(0x06, 0x2a, 0x01);
/// PC = 11b in MODE SENSE when saved pages are not implemented (SPC-4 §6.11).
pub const SAVING_PARAMETERS_NOT_SUPPORTED: Sense = Sense::new(0x05, 0x39, 0x00);
/// VERIFY with BYTCHK, or COMPARE AND WRITE, when the medium differs from the data-out buffer
/// (SBC-3 §5.33, SBC-4 §5.3).
pub const MISCOMPARE_DURING_VERIFY: Sense = Sense::new(0x0e, 0x1d, 0x00);
