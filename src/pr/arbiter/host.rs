//! The operator's fence (`sharedisk ctl pr preempt --victim G [--by H] [--abort]`): a PREEMPT
//! made from the host that must leave the victim unable to write, or change nothing.
//!
//! With `--by H` the daemon sends H's own PREEMPT (AND ABORT): RESERVATION KEY = H's key,
//! SERVICE ACTION RESERVATION KEY = G's key, TYPE = the reservation's type, LU scope. So every
//! rule of SPC-4 §5.9.11.4 applies exactly as if H had sent it: when G held a single-holder
//! reservation, H takes it over with the same type; every registration with G's key goes, with
//! 2A/05; PRgeneration counts once. Without `--by` G's registration alone is removed (as the
//! operator's preempt always did), which fences G only while a reservation held by others
//! excludes unregistered initiators.
//!
//! Either way the result is tried on a copy first: if G could still write under it (no
//! reservation is left, or G held the reservation and nobody takes it over, or H's PREEMPT was
//! refused), nothing changes and the refusal says why and what to do.

use super::{Arbiter, Holder, ProutOutcome, ProutRequest, ResType, ServiceAction};
use crate::pr::{Access, PrStatus};

/// Why the operator's preempt was refused; nothing was changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FenceRefusal {
    /// The victim has no registration: there is nothing to preempt.
    #[error(
        "{victim} is not registered, there is nothing to preempt (`sharedisk ctl pr show` \
         lists the registrations)"
    )]
    VictimNotRegistered { victim: String },
    /// `--by` names the victim itself.
    #[error("--by names the victim {victim}: name the surviving guest that fences it")]
    ByIsVictim { victim: String },
    /// The guest that would send the PREEMPT has no registration, so it has no key to send.
    #[error(
        "{by} is not registered, so it cannot preempt {victim}: name a registered guest with \
         --by (`sharedisk ctl pr show` lists them)"
    )]
    ByNotRegistered { by: String, victim: String },
    /// No reservation is held: an unregistered victim may write to an unreserved disk.
    #[error(
        "no reservation is held, so {victim} could still write once preempted: have a \
         surviving guest reserve first (e.g. type 5, Write Exclusive – registrants only), then \
         preempt; nothing was changed"
    )]
    NoReservation { victim: String },
    /// The victim holds the reservation and nobody would take it over: it would be released.
    #[error(
        "{victim} holds the reservation (type {code}); preempting its registration alone \
         releases it and {victim} could still write: add --by GUEST to have a registered \
         survivor take the reservation over; nothing was changed"
    )]
    VictimHolds { victim: String, code: u8 },
    /// The preempting guest's PREEMPT was refused by the reservation rules.
    #[error(
        "{by}'s PREEMPT of {victim} was refused ({status}); nothing was changed; `sharedisk ctl \
         pr show` shows the state"
    )]
    PreemptRefused {
        by: String,
        victim: String,
        status: String,
    },
    /// Whatever the reason, the victim could still write afterwards.
    #[error(
        "{victim} could still write after this preempt ({why}); nothing was changed: name a \
         survivor with --by, or have one reserve first"
    )]
    VictimCouldWrite { victim: String, why: String },
}

impl Arbiter {
    /// The operator's fence of `victim` (see the module): applied only if `victim` can no
    /// longer write afterwards; on a refusal nothing changes.
    pub fn host_preempt(
        &mut self,
        victim: &str,
        by: Option<&str>,
        abort: bool,
    ) -> Result<ProutOutcome, FenceRefusal> {
        let victim_key = self
            .key_of(victim)
            .ok_or_else(|| FenceRefusal::VictimNotRegistered {
                victim: victim.to_owned(),
            })?;
        let mut trial = self.clone();
        let outcome = match by {
            None => trial.operator_preempt(victim),
            Some(by) => {
                if by == victim {
                    return Err(FenceRefusal::ByIsVictim {
                        victim: victim.to_owned(),
                    });
                }
                let by_key = self
                    .key_of(by)
                    .ok_or_else(|| FenceRefusal::ByNotRegistered {
                        by: by.to_owned(),
                        victim: victim.to_owned(),
                    })?;
                let action = if abort {
                    ServiceAction::PreemptAndAbort
                } else {
                    ServiceAction::Preempt
                };
                // The reservation's own type: H holds what G held. With no reservation the
                // TYPE is ignored (SPC-4 §5.9.11.4.4 b); the check below refuses that case.
                let typ = self
                    .reservation()
                    .map_or(ResType::WriteExclusiveRegistrantsOnly, |r| r.res_type);
                let req = ProutRequest::new(action)
                    .key(by_key)
                    .sa_key(victim_key)
                    .typ(typ);
                trial.prout(by, &req)
            }
        };
        if outcome.status != PrStatus::Good {
            return Err(FenceRefusal::PreemptRefused {
                by: by.unwrap_or("host").to_owned(),
                victim: victim.to_owned(),
                status: match outcome.status {
                    PrStatus::Conflict => "RESERVATION CONFLICT".to_owned(),
                    PrStatus::CheckCondition(s) => {
                        format!("CHECK CONDITION {:02x}/{:02x}/{:02x}", s.key, s.asc, s.ascq)
                    }
                    other => format!("{other:?}"),
                },
            });
        }
        if trial.check(victim, Access::Write) {
            return Err(self.why_victim_could_write(victim));
        }
        *self = trial;
        Ok(outcome)
    }

    /// Why `victim` would keep write access after a preempt, from the state before it.
    fn why_victim_could_write(&self, victim: &str) -> FenceRefusal {
        let victim = victim.to_owned();
        match self.reservation() {
            None => FenceRefusal::NoReservation { victim },
            Some(r) if r.holder == Holder::Initiator(victim.clone()) => FenceRefusal::VictimHolds {
                victim,
                code: r.res_type.code(),
            },
            Some(r) if r.res_type.all_registrants() => FenceRefusal::VictimCouldWrite {
                why: format!(
                    "it is the last registrant of the type {} reservation, which goes with it",
                    r.res_type.code()
                ),
                victim,
            },
            Some(_) => FenceRefusal::VictimCouldWrite {
                why: "the reservation left does not exclude it".to_owned(),
                victim,
            },
        }
    }
}

#[cfg(test)]
mod tests;
