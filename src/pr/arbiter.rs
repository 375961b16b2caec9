//! The persistent-reservation state machine of one logical unit (SPC-4 §5.9, §6.15, §6.16).
//!
//! Pure logic: the caller parses commands (see `wire`), asks `prout`/`check`, persists
//! `state()` whenever an outcome says `changed`, and delivers unit attentions. Every input may
//! come from a hostile guest, so nothing here panics or grows without bound.

use std::collections::{HashMap, HashSet, VecDeque};

use serde::{Deserialize, Serialize};

use super::Access;
use crate::scsi::sense::{self, Sense};

mod host;
pub use host::FenceRefusal;

/// A reservation key (SPC-4 §5.9.7). Zero never names a registration.
pub type Key = u64;

/// Most registrations the LU holds (Elastic SAN's session limit); beyond it 05/55/04.
pub const MAX_REGISTRATIONS: usize = 128;

/// Most unit attentions queued per initiator, so a guest that never polls cannot grow memory.
pub const UA_QUEUE_LIMIT: usize = 16;

/// Persistent reservation TYPE codes (SPC-4 §6.16.2, table 187).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ResType {
    WriteExclusive,
    ExclusiveAccess,
    WriteExclusiveRegistrantsOnly,
    ExclusiveAccessRegistrantsOnly,
    WriteExclusiveAllRegistrants,
    ExclusiveAccessAllRegistrants,
}

impl ResType {
    /// Every valid TYPE code: 1, 3, 5, 6, 7, 8.
    pub const ALL: [ResType; 6] = [
        ResType::WriteExclusive,
        ResType::ExclusiveAccess,
        ResType::WriteExclusiveRegistrantsOnly,
        ResType::ExclusiveAccessRegistrantsOnly,
        ResType::WriteExclusiveAllRegistrants,
        ResType::ExclusiveAccessAllRegistrants,
    ];

    /// The TYPE from a CDB; `None` for obsolete/reserved codes (which earn 05/24/00).
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(ResType::WriteExclusive),
            3 => Some(ResType::ExclusiveAccess),
            5 => Some(ResType::WriteExclusiveRegistrantsOnly),
            6 => Some(ResType::ExclusiveAccessRegistrantsOnly),
            7 => Some(ResType::WriteExclusiveAllRegistrants),
            8 => Some(ResType::ExclusiveAccessAllRegistrants),
            _ => None,
        }
    }

    pub fn code(self) -> u8 {
        match self {
            ResType::WriteExclusive => 1,
            ResType::ExclusiveAccess => 3,
            ResType::WriteExclusiveRegistrantsOnly => 5,
            ResType::ExclusiveAccessRegistrantsOnly => 6,
            ResType::WriteExclusiveAllRegistrants => 7,
            ResType::ExclusiveAccessAllRegistrants => 8,
        }
    }

    /// Types 7 and 8: every registrant is a holder (SPC-4 §5.9.10).
    pub fn all_registrants(self) -> bool {
        matches!(
            self,
            ResType::WriteExclusiveAllRegistrants | ResType::ExclusiveAccessAllRegistrants
        )
    }

    /// Types 5 and 6 (and, for UA purposes, 7 and 8): releasing notifies registrants.
    fn notifies_on_release(self) -> bool {
        !matches!(self, ResType::WriteExclusive | ResType::ExclusiveAccess)
    }

    /// Types 3, 6 and 8 also restrict reads by non-holders.
    pub fn exclusive_access(self) -> bool {
        matches!(
            self,
            ResType::ExclusiveAccess
                | ResType::ExclusiveAccessRegistrantsOnly
                | ResType::ExclusiveAccessAllRegistrants
        )
    }
}

/// PERSISTENT RESERVE OUT service actions (SPC-4 §6.16.2, table 185).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
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

impl ServiceAction {
    /// `None` for codes > 7 (REPLACE LOST RESERVATION is not supported: 05/24/00).
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => ServiceAction::Register,
            1 => ServiceAction::Reserve,
            2 => ServiceAction::Release,
            3 => ServiceAction::Clear,
            4 => ServiceAction::Preempt,
            5 => ServiceAction::PreemptAndAbort,
            6 => ServiceAction::RegisterAndIgnore,
            7 => ServiceAction::RegisterAndMove,
            _ => return None,
        })
    }

    pub fn code(self) -> u8 {
        match self {
            ServiceAction::Register => 0,
            ServiceAction::Reserve => 1,
            ServiceAction::Release => 2,
            ServiceAction::Clear => 3,
            ServiceAction::Preempt => 4,
            ServiceAction::PreemptAndAbort => 5,
            ServiceAction::RegisterAndIgnore => 6,
            ServiceAction::RegisterAndMove => 7,
        }
    }

    /// Actions that bump PRgeneration when they succeed (SPC-4 §6.15.2).
    pub fn counted(self) -> bool {
        !matches!(self, ServiceAction::Reserve | ServiceAction::Release)
    }
}

/// One decoded PERSISTENT RESERVE OUT command (CDB + parameter list).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProutRequest {
    pub action: ServiceAction,
    /// CDB SCOPE; only 0 (LU_SCOPE) is valid.
    pub scope: u8,
    /// Raw CDB TYPE, validated by the arbiter because only some actions care.
    pub res_type: u8,
    /// RESERVATION KEY (RK).
    pub key: Key,
    /// SERVICE ACTION RESERVATION KEY (SARK).
    pub sa_key: Key,
    pub aptpl: bool,
    pub all_tg_pt: bool,
    pub spec_i_pt: bool,
    /// REGISTER AND MOVE only: unregister the caller after the move.
    pub unreg: bool,
    /// REGISTER AND MOVE only: the initiator the TransportID names; `None` if unparseable.
    pub move_to: Option<String>,
}

impl ProutRequest {
    /// A request with every field zero, to be filled with the setters below.
    pub fn new(action: ServiceAction) -> Self {
        ProutRequest {
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
    pub fn scope(mut self, scope: u8) -> Self {
        self.scope = scope;
        self
    }
    /// Raw TYPE code (invalid codes allowed, to exercise validation).
    pub fn res_type(mut self, code: u8) -> Self {
        self.res_type = code;
        self
    }
    /// Typed TYPE.
    pub fn typ(self, t: ResType) -> Self {
        self.res_type(t.code())
    }
    pub fn key(mut self, key: Key) -> Self {
        self.key = key;
        self
    }
    pub fn sa_key(mut self, sa_key: Key) -> Self {
        self.sa_key = sa_key;
        self
    }
    pub fn aptpl(mut self, v: bool) -> Self {
        self.aptpl = v;
        self
    }
    pub fn all_tg_pt(mut self, v: bool) -> Self {
        self.all_tg_pt = v;
        self
    }
    pub fn spec_i_pt(mut self, v: bool) -> Self {
        self.spec_i_pt = v;
        self
    }
    pub fn unreg(mut self, v: bool) -> Self {
        self.unreg = v;
        self
    }
    pub fn move_to(mut self, initiator: Option<&str>) -> Self {
        self.move_to = initiator.map(str::to_owned);
        self
    }
}

/// The SCSI status of a PR command; the blk path maps anything but `Good` to IOERR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrStatus {
    Good,
    /// RESERVATION CONFLICT (status 0x18), no sense data.
    Conflict,
    CheckCondition(Sense),
    /// BUSY (status 0x08): cluster mode, the shared state could not be reached or the change
    /// could not be settled in time; nothing was changed, or nothing the initiator was told of.
    Busy,
}

/// What a PERSISTENT RESERVE OUT did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProutOutcome {
    pub status: PrStatus,
    /// The persistent state changed: the caller must persist it before acknowledging.
    pub changed: bool,
    /// Initiators (never the caller) whose registration this PREEMPT, PREEMPT AND ABORT or
    /// CLEAR removed: the caller must fence their outstanding writes before returning GOOD.
    pub preempted: Vec<String>,
}

impl ProutOutcome {
    fn good(changed: bool) -> Self {
        ProutOutcome {
            status: PrStatus::Good,
            changed,
            preempted: Vec::new(),
        }
    }
    /// A change refused before anything was done (RESERVATION CONFLICT, nothing changed).
    pub fn refused() -> Self {
        Self::conflict()
    }
    fn conflict() -> Self {
        ProutOutcome {
            status: PrStatus::Conflict,
            changed: false,
            preempted: Vec::new(),
        }
    }
    fn check(sense: Sense) -> Self {
        ProutOutcome {
            status: PrStatus::CheckCondition(sense),
            changed: false,
            preempted: Vec::new(),
        }
    }
}

/// One registered initiator (I_T nexus) and its non-zero key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub initiator: String,
    pub key: Key,
}

/// Who holds the persistent reservation (SPC-4 §5.9.10).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Holder {
    /// Types 1, 3, 5, 6: the one initiator that reserved (or preempted, or received a move).
    Initiator(String),
    /// Types 7, 8: every registrant.
    AllRegistrants,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    pub holder: Holder,
    pub res_type: ResType,
}

/// The persistent part of the PR state: what must survive a daemon restart.
///
/// Unit attentions and SPC-2 reservations are deliberately absent: both are lost on a power
/// cycle in SPC-4 terms, and a restart is one.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct PrState {
    pub generation: u32,
    /// In registration order, which READ KEYS reports.
    pub registrations: Vec<Registration>,
    pub reservation: Option<Reservation>,
    /// APTPL of the last successful REGISTER/R&I/R&M: reported as PTPL_A.
    pub aptpl: bool,
}

impl PrState {
    /// Checks a loaded state for the invariants the arbiter keeps, so that a damaged state file
    /// is reported rather than silently obeyed.
    pub fn validate(&self) -> Result<(), String> {
        if self.registrations.len() > MAX_REGISTRATIONS {
            return Err(format!(
                "{} registrations (max {MAX_REGISTRATIONS})",
                self.registrations.len()
            ));
        }
        let mut seen = HashSet::new();
        for r in &self.registrations {
            if r.key == 0 {
                return Err(format!("initiator {:?} registered with key 0", r.initiator));
            }
            if !seen.insert(r.initiator.as_str()) {
                return Err(format!("initiator {:?} registered twice", r.initiator));
            }
        }
        match &self.reservation {
            None => Ok(()),
            Some(res) => match &res.holder {
                Holder::AllRegistrants if !res.res_type.all_registrants() => {
                    Err("all-registrants holder on a single-holder type".into())
                }
                Holder::AllRegistrants if self.registrations.is_empty() => {
                    Err("all-registrants reservation with no registrants".into())
                }
                Holder::Initiator(_) if res.res_type.all_registrants() => {
                    Err("single holder on an all-registrants type".into())
                }
                Holder::Initiator(h) if !seen.contains(h.as_str()) => {
                    Err(format!("holder {h:?} is not registered"))
                }
                _ => Ok(()),
            },
        }
    }
}

/// The PR arbiter of one logical unit.
#[derive(Clone, Debug)]
pub struct Arbiter {
    state: PrState,
    /// Initiators configured for this LU (the only valid REGISTER AND MOVE targets, besides
    /// initiators already registered).
    known: HashSet<String>,
    /// Pending unit attentions, FIFO per initiator.
    uas: HashMap<String, VecDeque<Sense>>,
    /// SPC-2 RESERVE(6) holder; only ever set while no PR registration exists.
    spc2: Option<String>,
}

impl Arbiter {
    /// A fresh LU with no registrations. Each known initiator gets 06/29/00 POWER ON RESET on
    /// its first command, as after any power on (SAM-5 §6.3.1, SPC-4 §5.9.6).
    pub fn new(known_initiators: impl IntoIterator<Item = String>) -> Self {
        Self::from_state(PrState::default(), known_initiators)
    }

    /// An LU restored from persisted state (APTPL / always-persist, SPC-4 §5.9.5). A restart is
    /// a power on for the guests, so each known initiator also gets 06/29/00.
    pub fn from_state(state: PrState, known_initiators: impl IntoIterator<Item = String>) -> Self {
        let mut arb = Arbiter {
            state,
            known: HashSet::new(),
            uas: HashMap::new(),
            spc2: None,
        };
        for i in known_initiators {
            arb.add_initiator(i);
        }
        arb
    }

    /// Makes an initiator known at runtime (a guest configured after start); it gets 06/29/00
    /// like everyone did at start. Returns false if it was already known.
    pub fn add_initiator(&mut self, initiator: String) -> bool {
        if self.known.contains(&initiator) {
            return false;
        }
        self.queue_ua(&initiator, sense::POWER_ON_RESET);
        self.known.insert(initiator);
        true
    }

    /// Forgets an initiator whose I_T nexus ended (an iSCSI session's logout or loss), with its
    /// pending unit attentions, unless PR or SPC-2 state still names it: an iSCSI initiator
    /// opens a new nexus (ISID) at every login, and the ones left behind unregistered would
    /// otherwise pile up. Returns whether it was forgotten.
    pub fn forget_initiator(&mut self, initiator: &str) -> bool {
        if self.is_registered(initiator) || self.spc2.as_deref() == Some(initiator) {
            return false;
        }
        self.uas.remove(initiator);
        self.known.remove(initiator)
    }

    /// Forgets an initiator that is no longer this daemon's (cluster mode: an iSCSI session
    /// that ended), with its pending unit attentions, registered or not: no daemon keeps the
    /// unit attentions the cluster establishes for a nexus without a session, so its next login,
    /// wherever, is a new initiator there and reports 29/00 (the state may have changed).
    pub fn forget_departed_initiator(&mut self, initiator: &str) {
        if self.spc2.as_deref() == Some(initiator) {
            self.spc2 = None;
        }
        self.uas.remove(initiator);
        self.known.remove(initiator);
    }

    /// The state to persist.
    pub fn state(&self) -> &PrState {
        &self.state
    }

    pub fn snapshot(&self) -> PrState {
        self.state.clone()
    }

    pub fn generation(&self) -> u32 {
        self.state.generation
    }

    pub fn registrations(&self) -> &[Registration] {
        &self.state.registrations
    }

    pub fn reservation(&self) -> Option<&Reservation> {
        self.state.reservation.as_ref()
    }

    pub fn aptpl(&self) -> bool {
        self.state.aptpl
    }

    pub fn is_known(&self, initiator: &str) -> bool {
        self.known.contains(initiator)
    }

    pub fn key_of(&self, initiator: &str) -> Option<Key> {
        self.reg_index(initiator)
            .map(|i| self.state.registrations[i].key)
    }

    pub fn is_registered(&self, initiator: &str) -> bool {
        self.reg_index(initiator).is_some()
    }

    /// SPC-4 §5.9.10: for types 7/8 every registrant holds the reservation.
    pub fn is_holder(&self, initiator: &str) -> bool {
        match &self.state.reservation {
            None => false,
            Some(Reservation {
                holder: Holder::Initiator(h),
                ..
            }) => h == initiator,
            Some(Reservation {
                holder: Holder::AllRegistrants,
                ..
            }) => self.is_registered(initiator),
        }
    }

    /// The SPC-2 RESERVE(6) holder, if any.
    pub fn spc2_holder(&self) -> Option<&str> {
        self.spc2.as_deref()
    }

    /// Takes `initiator`'s SPC-2 reservation away, if it holds one: a guest handed over to
    /// another daemon of a cluster takes it along (the reservation is kept by the daemon that
    /// serves its holder). Returns whether it held one.
    pub fn take_spc2(&mut self, initiator: &str) -> bool {
        let held = self.spc2.as_deref() == Some(initiator);
        if held {
            self.spc2 = None;
        }
        held
    }

    /// Gives `initiator` back the SPC-2 reservation it held on the daemon that served it before.
    /// Returns false, changing nothing, when another initiator holds one here (SPC-2
    /// reservations are each daemon's own, so two daemons may each have one), or when another
    /// initiator is registered (a PR OUT committed since the guest left: an SPC-2 reservation
    /// gives way to registrations, as in [`Arbiter::replace_state`], and none could have been
    /// made under it): the guest's is then lost.
    pub fn restore_spc2(&mut self, initiator: &str) -> bool {
        if self
            .state
            .registrations
            .iter()
            .any(|r| r.initiator != initiator)
        {
            return false;
        }
        match &self.spc2 {
            Some(h) if h != initiator => false,
            _ => {
                self.spc2 = Some(initiator.to_owned());
                true
            }
        }
    }

    /// SPC-2 §5.5.1: under a RESERVE(6) reservation every command from another initiator
    /// conflicts except INQUIRY, REPORT LUNS, REQUEST SENSE, RELEASE and the like; the caller
    /// uses this for the commands `check` does not classify (e.g. PR IN, TEST UNIT READY).
    pub fn spc2_conflicts(&self, initiator: &str) -> bool {
        matches!(&self.spc2, Some(h) if h != initiator)
    }

    /// May `initiator` perform `access` now? (SBC-3 §4.17 table 13 / SPC-4 §5.9.1; the table
    /// in the reference.) On the I/O hot path: O(1) and allocation-free with no reservation.
    pub fn check(&self, initiator: &str, access: Access) -> bool {
        // SPC-2 §5.5.1: RESERVE(6) excludes every other initiator from the medium.
        if let Some(h) = &self.spc2 {
            if h != initiator {
                return false;
            }
        }
        let Some(res) = &self.state.reservation else {
            // SPC-4 §5.9.1: registrations alone restrict nothing.
            return true;
        };
        let registered = self.is_registered(initiator);
        // SPC-4 §5.9.10: holders may do everything; under types 7/8 registrants are holders.
        let holder = match &res.holder {
            Holder::Initiator(h) => h == initiator,
            Holder::AllRegistrants => registered,
        };
        if holder {
            return true;
        }
        match (res.res_type, access) {
            // SBC-3 table 13: WE lets everyone read, EA lets nobody else in at all.
            (ResType::WriteExclusive, Access::Read) => true,
            (ResType::WriteExclusive, Access::Write | Access::Flush) => false,
            (ResType::ExclusiveAccess, _) => false,
            // Registrants-only: registrants may do everything; others read only under WE-RO.
            (ResType::WriteExclusiveRegistrantsOnly, Access::Read) => true,
            (ResType::WriteExclusiveRegistrantsOnly, _) => registered,
            (ResType::ExclusiveAccessRegistrantsOnly, _) => registered,
            // All-registrants: the caller is unregistered here (registrants are holders).
            (ResType::WriteExclusiveAllRegistrants, Access::Read) => true,
            (ResType::WriteExclusiveAllRegistrants, _) => false,
            (ResType::ExclusiveAccessAllRegistrants, _) => false,
        }
    }

    pub fn has_unit_attention(&self, initiator: &str) -> bool {
        self.uas.get(initiator).is_some_and(|q| !q.is_empty())
    }

    /// The oldest pending UA, removed (SAM-5 §5.14: one per command, in order).
    /// Puts back, as the next to report, a unit attention taken for a command that then ended
    /// without a response (aborted by its own initiator's ABORT TASK): SAM-5 §5.14 clears a
    /// unit attention only once it is reported.
    pub fn unreport_unit_attention(&mut self, initiator: &str, s: Sense) {
        let q = self.uas.entry(initiator.to_owned()).or_default();
        if !q.contains(&s) {
            q.push_front(s);
            if q.len() > UA_QUEUE_LIMIT {
                q.pop_back();
            }
        }
    }

    pub fn pop_unit_attention(&mut self, initiator: &str) -> Option<Sense> {
        let q = self.uas.get_mut(initiator)?;
        let s = q.pop_front();
        if q.is_empty() {
            self.uas.remove(initiator);
        }
        s
    }

    /// Queues UA `s` for every known initiator but `except`: a change of LU-wide state made
    /// through one I_T nexus, such as mode parameters (SPC-4 §7.5.2, 2A/01).
    pub fn ua_all_except(&mut self, except: &str, s: Sense) {
        let mut others: Vec<String> = self
            .known
            .iter()
            .filter(|i| *i != except)
            .cloned()
            .collect();
        others.sort();
        for o in others {
            self.queue_ua(&o, s);
        }
    }

    /// SPC-2 RESERVE(6) (SPC-2 §7.21), with CRH=1 semantics when PRs are in use
    /// (SPC-4 §5.9.3, "exceptions to SPC-2 RESERVE and RELEASE behavior").
    pub fn spc2_reserve(&mut self, initiator: &str) -> PrStatus {
        if !self.state.registrations.is_empty() {
            // SPC-4 §5.9.3: GOOD no-op for the PR holder, RC for anyone else.
            return if self.is_holder(initiator) {
                PrStatus::Good
            } else {
                PrStatus::Conflict
            };
        }
        // SPC-2 §7.21: reserve, or re-reserve by the holder; another holder conflicts.
        match &self.spc2 {
            Some(h) if h != initiator => PrStatus::Conflict,
            _ => {
                self.spc2 = Some(initiator.to_owned());
                PrStatus::Good
            }
        }
    }

    /// SPC-2 RELEASE(6) (SPC-2 §7.17).
    pub fn spc2_release(&mut self, initiator: &str) -> PrStatus {
        // SPC-2 §7.17: the holder's RELEASE always releases. (Registrations cannot appear
        // while an SPC-2 reservation is held by someone else, but the holder itself may have
        // registered since; it must still be able to let go.)
        if self.spc2.as_deref() == Some(initiator) {
            self.spc2 = None;
            return PrStatus::Good;
        }
        if !self.state.registrations.is_empty() {
            // SPC-4 §5.9.3 (CRH=1): GOOD no-op for the PR holder, RC for anyone else.
            return if self.is_holder(initiator) {
                PrStatus::Good
            } else {
                PrStatus::Conflict
            };
        }
        // SPC-2 §7.17: RELEASE by a non-holder is a GOOD no-op.
        PrStatus::Good
    }

    /// LOGICAL UNIT RESET (SAM-5 §7.7, §6.3.3): releases the SPC-2 reservation (reservations
    /// made with RESERVE/RELEASE do not survive a LU reset) and establishes 29/03 BUS DEVICE
    /// RESET FUNCTION OCCURRED for every I_T nexus, the one that asked included. Registrations,
    /// the persistent reservation and the UAs already pending all survive (SPC-4 §5.9.1).
    pub fn logical_unit_reset(&mut self) {
        self.spc2 = None;
        let all: Vec<String> = self.known.iter().cloned().collect();
        for i in all {
            self.queue_ua(&i, sense::BUS_DEVICE_RESET_FUNCTION_OCCURRED);
        }
    }

    /// I_T NEXUS RESET (SAM-5 §7.6): an I_T nexus loss for `initiator` alone (SAM-5 §6.3.4).
    /// Its SPC-2 reservation, if it holds one, is released, and it gets 29/07 I_T NEXUS LOSS
    /// OCCURRED; no other initiator notices. PR state survives (SPC-4 §5.9.1).
    pub fn i_t_nexus_reset(&mut self, initiator: &str) {
        if self.spc2.as_deref() == Some(initiator) {
            self.spc2 = None;
        }
        if self.is_known(initiator) {
            self.queue_ua(initiator, sense::I_T_NEXUS_LOSS_OCCURRED);
        }
    }

    /// Executes one PERSISTENT RESERVE OUT from `initiator` (SPC-4 §6.16).
    pub fn prout(&mut self, initiator: &str, req: &ProutRequest) -> ProutOutcome {
        // SPC-2 §5.5.1 table: PR OUT from another initiator conflicts with RESERVE(6).
        if self.spc2_conflicts(initiator) {
            return ProutOutcome::conflict();
        }
        // SPC-4 §6.16.3: SIP_C=0, so SPEC_I_PT=1 is an invalid parameter-list field; reported
        // before anything is acted on, as LIO does.
        if req.spec_i_pt {
            return ProutOutcome::check(sense::INVALID_FIELD_IN_PARAM_LIST);
        }
        // SPC-4 §6.16.3: ALL_TG_PT is accepted as a no-op (one target port, ATP_C=1).
        let before = self.state.generation;
        let out = match req.action {
            ServiceAction::Register => self.register(initiator, req, false),
            ServiceAction::RegisterAndIgnore => self.register(initiator, req, true),
            ServiceAction::Reserve => self.reserve(initiator, req),
            ServiceAction::Release => self.release(initiator, req),
            ServiceAction::Clear => self.clear(initiator, req),
            ServiceAction::Preempt | ServiceAction::PreemptAndAbort => self.preempt(initiator, req),
            ServiceAction::RegisterAndMove => self.register_and_move(initiator, req),
        };
        // SPC-4 §6.15.2: PRgeneration moves by exactly one per counted command that changed
        // the state, never by N and never otherwise.
        if out.changed && req.action.counted() {
            self.state.generation = before.wrapping_add(1);
        }
        out
    }

    fn reg_index(&self, initiator: &str) -> Option<usize> {
        self.state
            .registrations
            .iter()
            .position(|r| r.initiator == initiator)
    }

    /// Queues a UA behind every pending one of the same or a higher priority (SAM-5 §5.14: the
    /// 29h power-on and reset conditions are reported before any other; the rest in the order
    /// they arose). A pending reset is not queued twice, nor is anything else right after
    /// itself. On overflow the oldest of the lowest priority goes (the newest conditions are
    /// the ones the guest must act on).
    /// Takes in a state committed elsewhere (cluster mode: another daemon's PR OUT), keeping
    /// the unit attentions and known initiators of this LU. An SPC-2 reservation gives way to
    /// registrations, as it does to a local REGISTER.
    pub fn replace_state(&mut self, state: PrState) {
        if !state.registrations.is_empty() {
            self.spc2 = None;
        }
        self.state = state;
    }

    /// Queues UA `s` for `initiator` (cluster mode: a unit attention another daemon's PR OUT
    /// established for one of this daemon's initiators, SPC-4 §5.9.6).
    pub fn queue_unit_attention(&mut self, initiator: &str, s: Sense) {
        self.queue_ua(initiator, s);
    }

    /// Removes and returns the unit attentions pending for the initiators `pick` selects,
    /// oldest first per initiator, initiators in name order.
    pub fn take_unit_attentions(&mut self, pick: impl Fn(&str) -> bool) -> Vec<(String, Sense)> {
        let mut names: Vec<String> = self.uas.keys().filter(|i| pick(i)).cloned().collect();
        names.sort();
        let mut out = Vec::new();
        for n in names {
            if let Some(q) = self.uas.remove(&n) {
                out.extend(q.into_iter().map(|s| (n.clone(), s)));
            }
        }
        out
    }

    fn queue_ua(&mut self, initiator: &str, s: Sense) {
        let q = match self.uas.get_mut(initiator) {
            Some(q) => q,
            None => self.uas.entry(initiator.to_owned()).or_default(),
        };
        if q.back() == Some(&s) || (s.asc == 0x29 && q.contains(&s)) {
            return;
        }
        let rank = ua_rank(s);
        let at = q.iter().position(|&u| ua_rank(u) > rank).unwrap_or(q.len());
        q.insert(at, s);
        if q.len() > UA_QUEUE_LIMIT {
            let lowest = q.iter().map(|&u| ua_rank(u)).max().unwrap_or(rank);
            if let Some(i) = q.iter().position(|&u| ua_rank(u) == lowest) {
                q.remove(i);
            }
        }
    }

    /// UA `s` to every registrant except `except`.
    fn ua_registrants_except(&mut self, except: &str, s: Sense) {
        let targets: Vec<String> = self
            .state
            .registrations
            .iter()
            .filter(|r| r.initiator != except)
            .map(|r| r.initiator.clone())
            .collect();
        for t in targets {
            self.queue_ua(&t, s);
        }
    }

    /// SCOPE and TYPE where SPC-4 §6.16.2 (table "PERSISTENT RESERVE OUT service actions and
    /// valid parameters") validates them: RESERVE, RELEASE, and a PREEMPT or PREEMPT AND ABORT
    /// that preempts the reservation. REGISTER, REGISTER AND IGNORE EXISTING KEY, CLEAR,
    /// REGISTER AND MOVE (§5.9.8 b) and a PREEMPT that only removes registrations ignore both.
    fn scope_and_type(req: &ProutRequest) -> Result<ResType, Sense> {
        // House rule (SPC-4 §6.16.2 leaves ELEMENT scope obsolete): scope ≠ LU_SCOPE is an
        // invalid CDB field.
        if req.scope != 0 {
            return Err(sense::INVALID_FIELD_IN_CDB);
        }
        // SPC-4 §6.16.2: a TYPE outside table 187 is an invalid CDB field.
        ResType::from_code(req.res_type).ok_or(sense::INVALID_FIELD_IN_CDB)
    }

    /// Removes registration `idx` and applies the unregistering rules to the reservation it may
    /// have held (SPC-4 §5.9.11.3). Returns the removed initiator.
    fn remove_registration(&mut self, idx: usize) -> Option<String> {
        if idx >= self.state.registrations.len() {
            return None;
        }
        let gone = self.state.registrations.remove(idx).initiator;
        match &self.state.reservation {
            Some(Reservation {
                holder: Holder::Initiator(h),
                res_type,
            }) if *h == gone => {
                let t = *res_type;
                self.state.reservation = None;
                // SPC-4 §5.9.11.3: the holder of a registrants-only reservation unregistering
                // releases it, and the other registrants learn via 2A/04; for WE/EA no UA.
                if t.notifies_on_release() {
                    self.ua_registrants_except(&gone, sense::RESERVATIONS_RELEASED);
                }
            }
            Some(Reservation {
                holder: Holder::AllRegistrants,
                ..
            }) if self.state.registrations.is_empty() => {
                // SPC-4 §5.9.11.3: an all-registrants reservation ends with its last registrant.
                self.state.reservation = None;
            }
            _ => {}
        }
        Some(gone)
    }

    /// REGISTER and REGISTER AND IGNORE EXISTING KEY (SPC-4 §5.9.7, §6.16.2).
    fn register(&mut self, initiator: &str, req: &ProutRequest, ignore: bool) -> ProutOutcome {
        match self.reg_index(initiator) {
            None => {
                // SPC-4 §5.9.7: an unregistered REGISTER must carry RK=0, else RC.
                if !ignore && req.key != 0 {
                    return ProutOutcome::conflict();
                }
                // SPC-4 §5.9.7: unregistered with SARK=0 is a GOOD no-op (no generation bump).
                if req.sa_key == 0 {
                    return ProutOutcome::good(false);
                }
                // SPC-4 §5.9.7: no room for another registration: 05/55/04.
                if self.state.registrations.len() >= MAX_REGISTRATIONS {
                    return ProutOutcome::check(sense::INSUFFICIENT_REGISTRATION_RESOURCES);
                }
                self.state.registrations.push(Registration {
                    initiator: initiator.to_owned(),
                    key: req.sa_key,
                });
                // SPC-4 §5.9.5: remember APTPL (reported as PTPL_A).
                self.state.aptpl = req.aptpl;
                ProutOutcome::good(true)
            }
            Some(idx) => {
                // SPC-4 §5.9.7: a registered REGISTER needs RK = its key; R&I ignores RK.
                if !ignore && req.key != self.state.registrations[idx].key {
                    return ProutOutcome::conflict();
                }
                if req.sa_key != 0 {
                    // SPC-4 §5.9.7: a new key; a holder stays holder (holders are tracked by
                    // initiator, not key). Re-registering the same key and APTPL changes
                    // nothing and so does not bump PRgeneration (house rule).
                    let changed = self.state.registrations[idx].key != req.sa_key
                        || self.state.aptpl != req.aptpl;
                    self.state.registrations[idx].key = req.sa_key;
                    self.state.aptpl = req.aptpl;
                    ProutOutcome::good(changed)
                } else {
                    // SPC-4 §5.9.11.3: SARK=0 unregisters.
                    self.remove_registration(idx);
                    self.state.aptpl = req.aptpl;
                    ProutOutcome::good(true)
                }
            }
        }
    }

    /// RESERVE (SPC-4 §5.9.9).
    fn reserve(&mut self, initiator: &str, req: &ProutRequest) -> ProutOutcome {
        let t = match Self::scope_and_type(req) {
            Ok(t) => t,
            Err(s) => return ProutOutcome::check(s),
        };
        // SPC-4 §5.9.9: only a registered initiator with its own key may reserve; else RC.
        match self.key_of(initiator) {
            Some(k) if k == req.key => {}
            _ => return ProutOutcome::conflict(),
        }
        match &self.state.reservation {
            None => {
                self.state.reservation = Some(Reservation {
                    holder: if t.all_registrants() {
                        Holder::AllRegistrants
                    } else {
                        Holder::Initiator(initiator.to_owned())
                    },
                    res_type: t,
                });
                ProutOutcome::good(true)
            }
            // SPC-4 §5.9.9: the holder repeating the same type and scope is a GOOD no-op.
            Some(res) if res.res_type == t && self.is_holder(initiator) => {
                ProutOutcome::good(false)
            }
            // SPC-4 §5.9.9: a different type, or a non-holder: RC.
            Some(_) => ProutOutcome::conflict(),
        }
    }

    /// RELEASE (SPC-4 §5.9.11.2).
    fn release(&mut self, initiator: &str, req: &ProutRequest) -> ProutOutcome {
        let t = match Self::scope_and_type(req) {
            Ok(t) => t,
            Err(s) => return ProutOutcome::check(s),
        };
        // SPC-4 §6.16.2: an unregistered initiator conflicts.
        let Some(key) = self.key_of(initiator) else {
            return ProutOutcome::conflict();
        };
        // SPC-4 §5.9.11.2: no reservation, or a registered non-holder: GOOD, nothing happens.
        let Some(res) = &self.state.reservation else {
            return ProutOutcome::good(false);
        };
        if !self.is_holder(initiator) {
            return ProutOutcome::good(false);
        }
        // SPC-4 §5.9.11.2: the holder with the wrong key: RC.
        if key != req.key {
            return ProutOutcome::conflict();
        }
        // SPC-4 §5.9.11.2: a TYPE other than the reservation's: 05/26/04.
        if res.res_type != t {
            return ProutOutcome::check(sense::INVALID_RELEASE_OF_PR);
        }
        self.state.reservation = None;
        // SPC-4 §5.9.11.2: releasing a type 5-8 reservation tells the other registrants 2A/04.
        if t.notifies_on_release() {
            self.ua_registrants_except(initiator, sense::RESERVATIONS_RELEASED);
        }
        ProutOutcome::good(true)
    }

    /// CLEAR (SPC-4 §5.9.11.6). SCOPE and TYPE are ignored.
    fn clear(&mut self, initiator: &str, req: &ProutRequest) -> ProutOutcome {
        // SPC-4 §5.9.11.6: only a registrant with its own key may clear; else RC.
        match self.key_of(initiator) {
            Some(k) if k == req.key => {}
            _ => return ProutOutcome::conflict(),
        }
        let regs = std::mem::take(&mut self.state.registrations);
        self.state.reservation = None;
        let others: Vec<String> = regs
            .into_iter()
            .map(|r| r.initiator)
            .filter(|i| i != initiator)
            .collect();
        // SPC-4 §5.9.11.6: every other registrant gets 2A/03 RESERVATIONS PREEMPTED.
        for o in &others {
            self.queue_ua(o, sense::RESERVATIONS_PREEMPTED);
        }
        ProutOutcome {
            status: PrStatus::Good,
            changed: true,
            preempted: others,
        }
    }

    /// PREEMPT and PREEMPT AND ABORT (SPC-4 §5.9.11.4, §5.9.11.5). The arbiter does the
    /// registration work for both; aborting the preempted initiators' tasks is the caller's,
    /// driven by `preempted`.
    fn preempt(&mut self, initiator: &str, req: &ProutRequest) -> ProutOutcome {
        // SPC-4 §5.9.11.4.1: the caller must be registered with its own key; else RC.
        match self.key_of(initiator) {
            Some(k) if k == req.key => {}
            _ => return ProutOutcome::conflict(),
        }
        let sark = req.sa_key;
        let res = self.state.reservation.clone();
        let all_reg = res.as_ref().is_some_and(|r| r.res_type.all_registrants());

        if sark == 0 && !all_reg {
            // SPC-4 §6.16.3: SARK=0 only means "everyone else" under types 7/8; otherwise it
            // is an invalid parameter-list field (with or without a reservation).
            return ProutOutcome::check(sense::INVALID_FIELD_IN_PARAM_LIST);
        }
        // SPC-4 §5.9.11.4.1: a SARK matching no registration is RC (SARK=0 under 7/8 matches
        // "every other registrant" and is always accepted).
        if sark != 0 && !self.state.registrations.iter().any(|r| r.key == sark) {
            return ProutOutcome::conflict();
        }

        // Which registrations go: the caller always keeps its own (SPC-4 §5.9.11.4.3).
        let victim = |r: &Registration| r.initiator != initiator && (sark == 0 || r.key == sark);
        // Does the caller take over the reservation with the CDB's type?
        let takes_over = match &res {
            None => false,
            // SPC-4 §5.9.11.4.3: types 7/8 with SARK=0 preempt the reservation.
            Some(r) if r.res_type.all_registrants() => sark == 0,
            // SPC-4 §5.9.11.4.3: SARK = the holder's key preempts the holder.
            Some(Reservation {
                holder: Holder::Initiator(h),
                ..
            }) => self.key_of(h) == Some(sark),
            Some(_) => false,
        };
        // SCOPE and TYPE only matter when the reservation is preempted: SPC-4 §5.9.11.4.3 c)
        // establishes the new one from them, so they must be valid (05/24/00 before anything
        // changes). A PREEMPT that only removes registrations (no reservation, or SARK not the
        // holder's key, or SARK≠0 under types 7/8) ignores both (SPC-4 §5.9.11.4.4 b).
        let new_type = if takes_over {
            match Self::scope_and_type(req) {
                Ok(t) => Some(t),
                Err(s) => return ProutOutcome::check(s),
            }
        } else {
            None
        };

        let mut preempted = Vec::new();
        self.state.registrations.retain(|r| {
            if victim(r) {
                preempted.push(r.initiator.clone());
                false
            } else {
                true
            }
        });
        // SPC-4 §5.9.11.4.3/.4: every preempted registrant gets 2A/05 REGISTRATIONS PREEMPTED.
        for p in &preempted {
            self.queue_ua(p, sense::REGISTRATIONS_PREEMPTED);
        }

        if let Some(t) = new_type {
            let old_type = res.as_ref().map(|r| r.res_type);
            self.state.reservation = Some(Reservation {
                holder: if t.all_registrants() {
                    Holder::AllRegistrants
                } else {
                    Holder::Initiator(initiator.to_owned())
                },
                res_type: t,
            });
            // SPC-4 §5.9.11.4.3: if the type changed, every remaining registrant but the
            // caller gets 2A/04 RESERVATIONS RELEASED.
            if old_type != Some(t) {
                self.ua_registrants_except(initiator, sense::RESERVATIONS_RELEASED);
            }
        }
        // Otherwise the reservation stays as it was (SPC-4 §5.9.11.4.4): its holder cannot
        // have been removed, since removing the holder's key means taking over.

        // SPC-4 §6.15.2: a successful PREEMPT always counts, even if it removed nobody (the
        // caller's own key).
        ProutOutcome {
            status: PrStatus::Good,
            changed: true,
            preempted,
        }
    }

    /// The operator's CLEAR (`sharedisk ctl pr clear`): the disk's owner, not an initiator,
    /// drops every registration and the reservation, with CLEAR's side effects (SPC-4 §5.9.11.6): every registrant gets 2A/03
    /// RESERVATIONS PREEMPTED and PRgeneration counts it. Nothing registered: nothing changes.
    pub fn operator_clear(&mut self) -> ProutOutcome {
        if self.state.registrations.is_empty() && self.state.reservation.is_none() {
            return ProutOutcome::good(false);
        }
        let regs = std::mem::take(&mut self.state.registrations);
        self.state.reservation = None;
        let preempted: Vec<String> = regs.into_iter().map(|r| r.initiator).collect();
        for p in &preempted {
            self.queue_ua(p, sense::RESERVATIONS_PREEMPTED);
        }
        self.state.generation = self.state.generation.wrapping_add(1);
        ProutOutcome {
            status: PrStatus::Good,
            changed: true,
            preempted,
        }
    }

    /// The operator's PREEMPT (`sharedisk ctl pr preempt`) of `victim`'s registration, as
    /// another registrant's PREEMPT with the victim's key would remove it (SPC-4 §5.9.11.4): the victim gets 2A/05 REGISTRATIONS
    /// PREEMPTED, and if it held the reservation, the reservation is released as when a holder's
    /// registration goes (2A/04 to the others for types 5 and 6). PRgeneration counts it. An
    /// unregistered victim is a conflict, as a SERVICE ACTION RESERVATION KEY matching nobody.
    pub fn operator_preempt(&mut self, victim: &str) -> ProutOutcome {
        let Some(idx) = self.reg_index(victim) else {
            return ProutOutcome::conflict();
        };
        self.remove_registration(idx);
        self.queue_ua(victim, sense::REGISTRATIONS_PREEMPTED);
        self.state.generation = self.state.generation.wrapping_add(1);
        ProutOutcome {
            status: PrStatus::Good,
            changed: true,
            preempted: vec![victim.to_string()],
        }
    }

    /// REGISTER AND MOVE (SPC-4 §5.9.8), checks in LIO's order: registration, key, SARK,
    /// TransportID, then holdership.
    fn register_and_move(&mut self, initiator: &str, req: &ProutRequest) -> ProutOutcome {
        // SPC-4 §5.9.8: the caller must be registered with its own key; else RC.
        let Some(idx) = self.reg_index(initiator) else {
            return ProutOutcome::conflict();
        };
        if self.state.registrations[idx].key != req.key {
            return ProutOutcome::conflict();
        }
        // SPC-4 §6.16.4: SARK=0 is an invalid parameter-list field.
        if req.sa_key == 0 {
            return ProutOutcome::check(sense::INVALID_FIELD_IN_PARAM_LIST);
        }
        // SPC-4 §5.9.8: the TransportID must name another, existing I_T nexus.
        let target = match req.move_to.as_deref() {
            Some(t) if t != initiator && (self.is_known(t) || self.is_registered(t)) => {
                t.to_owned()
            }
            _ => return ProutOutcome::check(sense::INVALID_FIELD_IN_PARAM_LIST),
        };
        // SPC-4 §5.9.8: only the holder of a single-holder reservation may move it; no
        // reservation (LIO says 05/24/00; we follow the house brief: RC), another holder,
        // or types 7/8: RC.
        let res_type = match &self.state.reservation {
            Some(Reservation {
                holder: Holder::Initiator(h),
                res_type,
            }) if h == initiator => *res_type,
            _ => return ProutOutcome::conflict(),
        };
        let target_idx = self.reg_index(&target);
        // SPC-4 §5.9.8: registering the target may need room (UNREG frees the caller's slot).
        if target_idx.is_none()
            && self
                .state
                .registrations
                .len()
                .saturating_sub(usize::from(req.unreg))
                >= MAX_REGISTRATIONS
        {
            return ProutOutcome::check(sense::INSUFFICIENT_REGISTRATION_RESOURCES);
        }
        // SPC-4 §5.9.8 d/e: register the target with SARK; an existing registration takes
        // SARK as its key.
        match target_idx {
            Some(ti) => self.state.registrations[ti].key = req.sa_key,
            None => self.state.registrations.push(Registration {
                initiator: target.clone(),
                key: req.sa_key,
            }),
        }
        // SPC-4 §5.9.8 f/g: move the reservation, same scope and type.
        self.state.reservation = Some(Reservation {
            holder: Holder::Initiator(target),
            res_type,
        });
        // SPC-4 §5.9.8 h: UNREG=1 unregisters the caller (no longer the holder, so no UA).
        if req.unreg {
            if let Some(i) = self.reg_index(initiator) {
                self.remove_registration(i);
            }
        }
        self.state.aptpl = req.aptpl;
        ProutOutcome::good(true)
    }
}

/// Reporting priority of a unit attention, lowest first: SAM-5 §5.14 reports the 29h conditions
/// before all others, power on before a LU reset before an I_T nexus loss (LIO orders them the
/// same way). Every other condition shares the last rank.
fn ua_rank(s: Sense) -> u8 {
    match (s.asc, s.ascq) {
        (0x29, 0x00) => 0,
        (0x29, 0x01 | 0x04) => 1,
        (0x29, 0x02 | 0x05 | 0x06) => 2,
        (0x29, 0x03) => 3,
        (0x29, 0x07) => 4,
        (0x29, _) => 5,
        _ => 6,
    }
}

#[cfg(test)]
mod tests;
