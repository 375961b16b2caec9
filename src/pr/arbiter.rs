// TEMPORARY STUB (replaced by the real arbiter)
use crate::pr::Access;
use crate::sense::Sense;
use serde::{Deserialize, Serialize};
pub type Key = u64;
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResType {
    WriteExclusive,
    ExclusiveAccess,
    WriteExclusiveRegistrantsOnly,
    ExclusiveAccessRegistrantsOnly,
    WriteExclusiveAllRegistrants,
    ExclusiveAccessAllRegistrants,
}
impl ResType {
    pub fn from_code(c: u8) -> Option<Self> {
        match c {
            1 => Some(Self::WriteExclusive),
            3 => Some(Self::ExclusiveAccess),
            5 => Some(Self::WriteExclusiveRegistrantsOnly),
            6 => Some(Self::ExclusiveAccessRegistrantsOnly),
            7 => Some(Self::WriteExclusiveAllRegistrants),
            8 => Some(Self::ExclusiveAccessAllRegistrants),
            _ => None,
        }
    }
}
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceAction {
    Register,
    Reserve,
    Release,
    Clear,
    Preempt,
    PreemptAndAbort,
    RegisterAndIgnore,
    RegisterAndMove,
}
#[derive(Clone, Debug)]
pub struct ProutRequest {
    pub action: ServiceAction,
    pub scope: u8,
    pub res_type: u8,
    pub key: Key,
    pub sa_key: Key,
    pub aptpl: bool,
    pub all_tg_pt: bool,
    pub spec_i_pt: bool,
    pub unreg: bool,
    pub move_to: Option<String>,
}
impl ProutRequest {
    pub fn new(action: ServiceAction) -> Self {
        Self {
            action,
            scope: 0,
            res_type: 0,
            key: 0,
            sa_key: 0,
            aptpl: false,
            all_tg_pt: false,
            spec_i_pt: false,
            unreg: false,
            move_to: None,
        }
    }
}
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrStatus {
    Good,
    Conflict,
    CheckCondition(Sense),
}
pub struct ProutOutcome {
    pub status: PrStatus,
    pub changed: bool,
    pub preempted: Vec<String>,
}
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    pub initiator: String,
    pub key: Key,
}
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Holder {
    Initiator(String),
    AllRegistrants,
}
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Reservation {
    pub holder: Holder,
    pub res_type: ResType,
}
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct PrState {
    pub generation: u32,
    pub registrations: Vec<Registration>,
    pub reservation: Option<Reservation>,
    pub aptpl: bool,
}
#[derive(Clone, Debug)]
pub struct Arbiter {
    state: PrState,
}
impl Arbiter {
    pub fn new(_k: impl IntoIterator<Item = String>) -> Self {
        Arbiter {
            state: PrState::default(),
        }
    }
    pub fn from_state(state: PrState, _k: impl IntoIterator<Item = String>) -> Self {
        Arbiter { state }
    }
    pub fn state(&self) -> &PrState {
        &self.state
    }
    pub fn prout(&mut self, _i: &str, _r: &ProutRequest) -> ProutOutcome {
        ProutOutcome {
            status: PrStatus::Good,
            changed: false,
            preempted: vec![],
        }
    }
    pub fn check(&self, _i: &str, _a: Access) -> bool {
        true
    }
    pub fn has_unit_attention(&self, _i: &str) -> bool {
        false
    }
    pub fn pop_unit_attention(&mut self, _i: &str) -> Option<Sense> {
        None
    }
}
