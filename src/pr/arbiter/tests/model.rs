//! An independent reference model of PERSISTENT RESERVE OUT (SPC-4 §5.9.7-§5.9.11), written
//! from the standard and not from the arbiter: its own state, its own rules, none of the
//! arbiter's helpers. A random walk drives both with the same well-formed commands and compares
//! the outcome class and the whole persistent state after every step. (Field checks, REGISTER
//! AND MOVE and unit attentions have their own rule-by-rule tests.)

use rand::{Rng, SeedableRng};

use crate::pr::{Arbiter, Holder, PrStatus, ProutRequest, ResType, ServiceAction};

const WHO: [&str; 4] = ["a", "b", "c", "d"];

/// What a command answered, coarsely: the sense of a CHECK CONDITION is the field checks' affair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    Good,
    Conflict,
    Check,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Model {
    generation: u32,
    /// (initiator, key) in registration order.
    regs: Vec<(String, u64)>,
    /// (holder initiator, or None for "every registrant"; type code).
    res: Option<(Option<String>, u8)>,
    aptpl: bool,
}

fn all_registrants(code: u8) -> bool {
    matches!(code, 7 | 8)
}

impl Model {
    fn key(&self, who: &str) -> Option<u64> {
        self.regs.iter().find(|(w, _)| w == who).map(|&(_, k)| k)
    }

    fn holds(&self, who: &str) -> bool {
        match &self.res {
            Some((Some(h), _)) => h == who,
            Some((None, _)) => self.key(who).is_some(),
            None => false,
        }
    }

    /// Removes `who`'s registration; a single holder's reservation goes with it, an
    /// all-registrants one when the last registrant leaves (SPC-4 §5.9.11.2).
    fn unregister(&mut self, who: &str) {
        let held = matches!(&self.res, Some((Some(h), _)) if h == who);
        self.regs.retain(|(w, _)| w != who);
        if held || (matches!(self.res, Some((None, _))) && self.regs.is_empty()) {
            self.res = None;
        }
    }

    fn register(&mut self, who: &str, r: &ProutRequest, ignore: bool) -> Answer {
        match self.key(who) {
            None => {
                if !ignore && r.key != 0 {
                    return Answer::Conflict;
                }
                if r.sa_key == 0 {
                    return Answer::Good;
                }
                if self.regs.len() >= crate::pr::MAX_REGISTRATIONS {
                    return Answer::Check;
                }
                self.regs.push((who.to_string(), r.sa_key));
            }
            Some(k) => {
                if !ignore && r.key != k {
                    return Answer::Conflict;
                }
                if r.sa_key == 0 {
                    self.unregister(who);
                } else if r.sa_key != k {
                    for reg in self.regs.iter_mut().filter(|(w, _)| w == who) {
                        reg.1 = r.sa_key;
                    }
                } else if self.aptpl == r.aptpl {
                    return Answer::Good;
                }
            }
        }
        self.aptpl = r.aptpl;
        self.generation = self.generation.wrapping_add(1);
        Answer::Good
    }

    fn step(&mut self, who: &str, r: &ProutRequest) -> Answer {
        use ServiceAction::*;
        match r.action {
            Register => return self.register(who, r, false),
            RegisterAndIgnore => return self.register(who, r, true),
            _ => {}
        }
        // Every other action needs the caller registered, and (but for a non-holder's RELEASE,
        // which does nothing) under RESERVATION KEY.
        let Some(key) = self.key(who) else {
            return Answer::Conflict;
        };
        let t = r.res_type;
        if r.action == Release && !self.holds(who) {
            return Answer::Good;
        }
        if key != r.key {
            return Answer::Conflict;
        }
        match r.action {
            Reserve => match &self.res {
                None => {
                    let holder = (!all_registrants(t)).then(|| who.to_string());
                    self.res = Some((holder, t));
                    Answer::Good
                }
                Some((_, held)) if self.holds(who) && *held == t => Answer::Good,
                Some(_) => Answer::Conflict,
            },
            Release => match &self.res {
                None => Answer::Good,
                Some((_, held)) if *held != t => Answer::Check,
                Some(_) => {
                    self.res = None;
                    Answer::Good
                }
            },
            Clear => {
                self.regs.clear();
                self.res = None;
                self.generation = self.generation.wrapping_add(1);
                Answer::Good
            }
            Preempt | PreemptAndAbort => self.preempt(who, r.sa_key, t),
            Register | RegisterAndIgnore | RegisterAndMove => unreachable!(),
        }
    }

    /// SPC-4 §5.9.11.4: remove the registrations of SARK (never the caller's own); a preempted
    /// holder's reservation passes to the caller with the new type.
    fn preempt(&mut self, who: &str, sark: u64, t: u8) -> Answer {
        let remove = |m: &mut Model, key: Option<u64>| {
            m.regs
                .retain(|(w, k)| w == who || key.is_some_and(|key| *k != key));
        };
        match self.res.clone() {
            None => {
                if sark == 0 {
                    return Answer::Check;
                }
                if !self.regs.iter().any(|&(_, k)| k == sark) {
                    return Answer::Conflict;
                }
                remove(self, Some(sark));
            }
            Some((None, _)) => {
                if sark == 0 {
                    // Every other registrant goes; the caller alone holds, with the new type.
                    remove(self, None);
                    let holder = (!all_registrants(t)).then(|| who.to_string());
                    self.res = Some((holder, t));
                } else {
                    if !self.regs.iter().any(|&(_, k)| k == sark) {
                        return Answer::Conflict;
                    }
                    remove(self, Some(sark));
                }
            }
            Some((Some(holder), _)) => {
                let holder_key = self.key(&holder);
                if sark == 0 {
                    return Answer::Check;
                }
                if holder_key == Some(sark) {
                    remove(self, Some(sark));
                    let new_holder = (!all_registrants(t)).then(|| who.to_string());
                    self.res = Some((new_holder, t));
                } else {
                    if !self.regs.iter().any(|&(_, k)| k == sark) {
                        return Answer::Conflict;
                    }
                    remove(self, Some(sark));
                }
            }
        }
        self.generation = self.generation.wrapping_add(1);
        Answer::Good
    }

    /// The model in the arbiter's persistent form.
    fn matches(&self, a: &Arbiter) -> Result<(), String> {
        let s = a.state();
        let regs: Vec<(String, u64)> = s
            .registrations
            .iter()
            .map(|r| (r.initiator.clone(), r.key))
            .collect();
        let res = s.reservation.as_ref().map(|r| {
            let holder = match &r.holder {
                Holder::Initiator(i) => Some(i.clone()),
                Holder::AllRegistrants => None,
            };
            (holder, r.res_type.code())
        });
        let theirs = Model {
            generation: s.generation,
            regs,
            res,
            aptpl: s.aptpl,
        };
        if &theirs == self {
            Ok(())
        } else {
            Err(format!("arbiter {theirs:?}\nmodel   {self:?}"))
        }
    }
}

#[test]
fn the_arbiter_agrees_with_an_independent_model_after_every_step() {
    use ServiceAction::*;
    let actions = [
        Register,
        RegisterAndIgnore,
        Reserve,
        Release,
        Clear,
        Preempt,
        PreemptAndAbort,
    ];
    let keys = [0u64, 1, 2, 3, 0x1234_5678_9abc];
    for seed in 0..16u64 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed_0000 + seed);
        let mut arb = Arbiter::new(WHO.map(String::from));
        let mut model = Model::default();
        for step in 0..2000 {
            let who = WHO[rng.gen_range(0..WHO.len())];
            let action = actions[rng.gen_range(0..actions.len())];
            // Mostly the caller's own key, so that commands get past the key check.
            let rk = match (rng.gen_bool(0.7), model.key(who)) {
                (true, Some(k)) => k,
                _ => keys[rng.gen_range(0..keys.len())],
            };
            let sark = if rng.gen_bool(0.4) {
                let other = WHO[rng.gen_range(0..WHO.len())];
                model.key(other).unwrap_or(0)
            } else {
                keys[rng.gen_range(0..keys.len())]
            };
            let t = ResType::ALL[rng.gen_range(0..ResType::ALL.len())];
            let r = ProutRequest::new(action)
                .key(rk)
                .sa_key(sark)
                .typ(t)
                .aptpl(rng.gen_bool(0.2));
            let before = model.clone();
            let want = model.step(who, &r);
            let got = match arb.prout(who, &r).status {
                PrStatus::Good => Answer::Good,
                PrStatus::Conflict => Answer::Conflict,
                PrStatus::CheckCondition(_) => Answer::Check,
                PrStatus::Busy => panic!("the arbiter alone never answers BUSY"),
            };
            let ctx = format!("seed {seed} step {step}: {who} {r:?}\nbefore {before:?}");
            assert_eq!(got, want, "{ctx}");
            if let Err(diff) = model.matches(&arb) {
                panic!("{ctx}\n{diff}");
            }
        }
    }
}
