//! A gateway's command rules, as pure state (docs/protocol.md, "Commands"): once-only by command
//! id, stale terms and expiry refused, epochs ordered per dimension by (term, epoch), halt beats
//! resume, allocations in [0, 1].
//!
//! A rollback of a whole gateway is one command of 1,000 targets: `admit` judges them all in one
//! call and `applied` records them in one call, so the gateway's bookkeeping costs one message's
//! work, not 1,000 (issue 15). The gateway SDK (`python/rampart/gateway/commands.py`) wraps it.

use rustc_hash::{FxHashMap, FxHashSet};
use std::collections::VecDeque;

/// Remember this many command ids for dedup (a retry arrives within seconds; this is hours).
pub const DEDUP_CAPACITY: usize = 100_000;

/// A decision's place in the order: (leadership term, epoch). A newer leader's decisions come
/// after an older one's, whatever their clocks (docs/ha.md).
pub type Decision = (i128, i128);

/// The place before every decision: nothing decided yet.
pub const NONE: Decision = (0, -1);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Halt,
    Resume,
    CancelAll,
    Flatten,
    SetAllocation,
    Activate,
    Standby,
}

impl Kind {
    pub fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "halt" => Kind::Halt,
            "resume" => Kind::Resume,
            "cancel_all" => Kind::CancelAll,
            "flatten" => Kind::Flatten,
            "set_allocation" => Kind::SetAllocation,
            "activate" => Kind::Activate,
            "standby" => Kind::Standby,
            _ => return None,
        })
    }

    /// The control dimension whose epochs order this kind; cancel-all and flatten have none
    /// (always safe to apply).
    pub fn dim(self) -> Option<Dim> {
        match self {
            Kind::Halt | Kind::Resume => Some(Dim::Halt),
            Kind::SetAllocation => Some(Dim::Allocation),
            Kind::Activate | Kind::Standby => Some(Dim::Activation),
            Kind::CancelAll | Kind::Flatten => None,
        }
    }
}

/// Epochs only grow per dimension: a halt/resume, an allocation and an activation are
/// independent decisions, each superseded only by a later one of its own kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dim {
    Halt = 0,
    Allocation = 1,
    Activation = 2,
}

impl Dim {
    pub const ALL: [Dim; 3] = [Dim::Halt, Dim::Allocation, Dim::Activation];

    pub fn name(self) -> &'static str {
        match self {
            Dim::Halt => "halt",
            Dim::Allocation => "allocation",
            Dim::Activation => "activation",
        }
    }
}

/// Why a target is not applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Applied already under this command id (a retry: a success, not an error).
    Duplicate,
    /// Sent by a Rampart that no longer leads: its term is older than one seen.
    StaleTerm,
    /// Received after the command's `valid_until`.
    Expired,
    /// Older than the algorithm's last decision of its dimension (or a resume not after the
    /// last halt).
    StaleEpoch,
    /// Not a valid target (an allocation outside [0, 1], or missing).
    Refused,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Duplicate => "duplicate",
            Status::StaleTerm => "stale_term",
            Status::Expired => "expired",
            Status::StaleEpoch => "stale_epoch",
            Status::Refused => "refused",
        }
    }
}

/// Who halted an algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HaltCause {
    Command,
    Deadman,
    Gateway,
}

impl HaltCause {
    pub fn parse(s: &str) -> Option<HaltCause> {
        Some(match s {
            "command" => HaltCause::Command,
            "deadman" => HaltCause::Deadman,
            "gateway" => HaltCause::Gateway,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            HaltCause::Command => "command",
            HaltCause::Deadman => "deadman",
            HaltCause::Gateway => "gateway",
        }
    }
}

/// What the gateway knows of one algorithm's control state (what its heartbeat reports).
#[derive(Clone, Debug, PartialEq)]
pub struct Control {
    pub halted: bool,
    /// The latest halt's decision (a halt the gateway decided itself takes the last applied).
    pub halt: Decision,
    pub halt_cause: Option<HaltCause>,
    /// `None` while nothing has been set since the gateway started.
    pub allocation: Option<f64>,
    pub active: Option<bool>,
    /// The last decision applied per dimension (`Dim as usize`).
    pub last: [Option<Decision>; 3],
}

impl Default for Control {
    fn default() -> Self {
        Control {
            halted: false,
            halt: NONE,
            halt_cause: None,
            allocation: None,
            active: None,
            last: [None; 3],
        }
    }
}

impl Control {
    pub fn last(&self, dim: Dim) -> Decision {
        self.last[dim as usize].unwrap_or(NONE)
    }
}

/// One command as the rules see it (its targets are passed beside it).
#[derive(Clone, Copy, Debug)]
pub struct Command<'a> {
    pub id: &'a str,
    pub kind: Kind,
    pub term: i128,
    pub epoch: i128,
    pub valid_until: i128,
}

impl Command<'_> {
    fn decision(&self) -> Decision {
        (self.term, self.epoch)
    }
}

/// One target: the algorithm, and its allocation for `set_allocation`.
pub type Target<'a> = (&'a str, Option<f64>);

/// Per-gateway command state.
#[derive(Default)]
pub struct CommandBook {
    algos: FxHashMap<String, Control>,
    /// command id -> the algorithms it was applied to (a retry of those is a duplicate)
    applied: FxHashMap<String, FxHashSet<String>>,
    /// the command ids in `applied`, oldest first (evicted past `DEDUP_CAPACITY`)
    order: VecDeque<String>,
    /// Bumped by every change a report would show.
    pub version: u64,
    /// The newest leadership term seen in a verified command or sidecar heartbeat.
    pub term: i128,
}

impl CommandBook {
    pub fn new() -> Self {
        Self::default()
    }

    /// A verified message of `term`: from now on, what an older term sends is refused.
    pub fn see_term(&mut self, term: i128) {
        if term > self.term {
            self.term = term;
            self.version += 1;
        }
    }

    pub fn control(&self, algo: &str) -> Option<&Control> {
        self.algos.get(algo)
    }

    fn control_mut(&mut self, algo: &str) -> &mut Control {
        if !self.algos.contains_key(algo) {
            self.algos.insert(algo.to_owned(), Control::default());
        }
        self.algos.get_mut(algo).expect("inserted above")
    }

    /// Judge every target of `command` at `now`: the indices of the targets to apply, in
    /// order, into `apply`; the others with their status into `refused`. A retry of a target
    /// already applied under the same id is a duplicate (checked first: a late retry of an
    /// applied command is a success, not an expiry); a target that failed is applied again
    /// when the command is retried. An algorithm judged on its merits becomes known (reported).
    pub fn admit(
        &mut self,
        command: &Command,
        now: i128,
        targets: &[Target],
        apply: &mut Vec<usize>,
        refused: &mut Vec<(usize, Status)>,
    ) {
        let whole = if command.term < self.term {
            Some(Status::StaleTerm)
        } else if now > command.valid_until {
            Some(Status::Expired)
        } else {
            None
        };
        let dim = command.kind.dim();
        let decision = command.decision();
        let done = self.applied.get(command.id);
        for (i, &(algo, allocation)) in targets.iter().enumerate() {
            if done.is_some_and(|d| d.contains(algo)) {
                refused.push((i, Status::Duplicate));
                continue;
            }
            if let Some(status) = whole {
                refused.push((i, status));
                continue;
            }
            let ctl = match self.algos.get(algo) {
                Some(ctl) => ctl,
                None => {
                    self.algos.insert(algo.to_owned(), Control::default());
                    &self.algos[algo]
                }
            };
            // halt beats resume: only a later decision lifts a halt
            let stale = dim.is_some_and(|d| decision < ctl.last(d))
                || (command.kind == Kind::Resume && decision <= ctl.halt);
            let status = if stale {
                Some(Status::StaleEpoch)
            } else if command.kind == Kind::SetAllocation
                && !allocation.is_some_and(|a| (0.0..=1.0).contains(&a))
            {
                Some(Status::Refused)
            } else {
                None
            };
            match status {
                Some(s) => refused.push((i, s)),
                None => apply.push(i),
            }
        }
    }

    /// `targets` of `command` were applied: remembered for dedup, their control state moves.
    pub fn applied(&mut self, command: &Command, targets: &[Target]) {
        if targets.is_empty() {
            return; // nothing applied: no dedup slot taken, nothing to report
        }
        self.version += 1;
        if !self.applied.contains_key(command.id) {
            self.applied
                .insert(command.id.to_owned(), FxHashSet::default());
            self.order.push_back(command.id.to_owned());
            while self.order.len() > DEDUP_CAPACITY {
                if let Some(old) = self.order.pop_front() {
                    self.applied.remove(&old);
                }
            }
        }
        let done = self.applied.get_mut(command.id).expect("inserted above");
        for &(algo, _) in targets {
            if !done.contains(algo) {
                done.insert(algo.to_owned());
            }
        }
        let dim = command.kind.dim();
        let decision = command.decision();
        for &(algo, allocation) in targets {
            let ctl = self.control_mut(algo);
            if let Some(d) = dim {
                if decision > ctl.last(d) {
                    ctl.last[d as usize] = Some(decision);
                }
            }
            match command.kind {
                Kind::Halt => {
                    ctl.halted = true;
                    ctl.halt_cause = Some(HaltCause::Command);
                    ctl.halt = ctl.halt.max(decision);
                }
                Kind::Resume => {
                    ctl.halted = false;
                    ctl.halt_cause = None;
                }
                Kind::SetAllocation => ctl.allocation = allocation,
                Kind::Activate => ctl.active = Some(true),
                Kind::Standby => ctl.active = Some(false),
                Kind::CancelAll | Kind::Flatten => {}
            }
        }
    }

    /// A halt the gateway decided itself (its dead-man's switch, its own risk checks): only a
    /// later resume lifts it, and it is reported with its cause.
    pub fn halt_locally(&mut self, algo: &str, cause: HaltCause) {
        self.version += 1;
        let ctl = self.control_mut(algo);
        ctl.halted = true;
        ctl.halt_cause = Some(cause);
        ctl.halt = ctl.halt.max(ctl.last(Dim::Halt));
    }

    /// An allocation the gateway set itself (its own risk checks cut an algorithm's capital):
    /// reported as it is, no epoch moved (Rampart adopts what it cannot overrule safely).
    pub fn allocate_locally(&mut self, algo: &str, allocation: f64) {
        self.version += 1;
        self.control_mut(algo).allocation = Some(allocation);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(id: &str, kind: Kind, term: i128, epoch: i128) -> Command<'_> {
        Command {
            id,
            kind,
            term,
            epoch,
            valid_until: 1_000,
        }
    }

    fn judge(
        book: &mut CommandBook,
        c: &Command,
        targets: &[Target],
    ) -> (Vec<usize>, Vec<(usize, Status)>) {
        let (mut apply, mut refused) = (Vec::new(), Vec::new());
        book.admit(c, 0, targets, &mut apply, &mut refused);
        (apply, refused)
    }

    fn run(book: &mut CommandBook, c: &Command, targets: &[Target]) -> Vec<(usize, Status)> {
        let (apply, refused) = judge(book, c, targets);
        let applied: Vec<Target> = apply.iter().map(|&i| targets[i]).collect();
        book.applied(c, &applied);
        refused
    }

    #[test]
    fn a_retry_is_a_duplicate_even_after_expiry() {
        let mut book = CommandBook::new();
        let c = cmd("x", Kind::Halt, 0, 5);
        assert!(run(&mut book, &c, &[("a", None), ("b", None)]).is_empty());
        let (mut apply, mut refused) = (Vec::new(), Vec::new());
        book.admit(&c, 5_000, &[("a", None)], &mut apply, &mut refused);
        assert_eq!(refused, vec![(0, Status::Duplicate)]);
        book.admit(
            &cmd("y", Kind::Halt, 0, 6),
            5_000,
            &[("a", None)],
            &mut apply,
            &mut refused,
        );
        assert_eq!(refused[1], (0, Status::Expired));
    }

    #[test]
    fn halt_beats_resume_and_terms_order_decisions() {
        let mut book = CommandBook::new();
        run(&mut book, &cmd("h", Kind::Halt, 0, 10), &[("a", None)]);
        let stale = run(&mut book, &cmd("r", Kind::Resume, 0, 10), &[("a", None)]);
        assert_eq!(stale, vec![(0, Status::StaleEpoch)]);
        assert!(book.control("a").unwrap().halted);
        // a newer leader's resume lifts it whatever its epoch
        assert!(run(&mut book, &cmd("r2", Kind::Resume, 1, 3), &[("a", None)]).is_empty());
        assert!(!book.control("a").unwrap().halted);
        book.see_term(1);
        let old = run(&mut book, &cmd("h2", Kind::Halt, 0, 99), &[("a", None)]);
        assert_eq!(old, vec![(0, Status::StaleTerm)]);
    }

    #[test]
    fn allocations_are_checked_and_dimensions_are_independent() {
        let mut book = CommandBook::new();
        run(&mut book, &cmd("h", Kind::Halt, 0, 10), &[("a", None)]);
        let c = cmd("s", Kind::SetAllocation, 0, 9);
        let refused = run(
            &mut book,
            &c,
            &[("a", Some(0.5)), ("b", Some(1.5)), ("c", None)],
        );
        assert_eq!(refused, vec![(1, Status::Refused), (2, Status::Refused)]);
        assert_eq!(book.control("a").unwrap().allocation, Some(0.5));
        let older = run(
            &mut book,
            &cmd("s0", Kind::SetAllocation, 0, 8),
            &[("a", Some(0.1))],
        );
        assert_eq!(older, vec![(0, Status::StaleEpoch)]);
    }

    #[test]
    fn a_local_halt_is_lifted_only_by_a_later_resume() {
        let mut book = CommandBook::new();
        run(&mut book, &cmd("r", Kind::Resume, 0, 4), &[("a", None)]);
        book.halt_locally("a", HaltCause::Deadman);
        let again = run(&mut book, &cmd("r1", Kind::Resume, 0, 4), &[("a", None)]);
        assert_eq!(again, vec![(0, Status::StaleEpoch)]);
        assert!(run(&mut book, &cmd("r2", Kind::Resume, 0, 5), &[("a", None)]).is_empty());
        assert!(!book.control("a").unwrap().halted);
    }

    #[test]
    fn dedup_forgets_the_oldest_commands_past_its_capacity() {
        let mut book = CommandBook::new();
        let ids: Vec<String> = (0..=DEDUP_CAPACITY).map(|i| format!("c{i}")).collect();
        for (i, id) in ids.iter().enumerate() {
            book.applied(&cmd(id, Kind::CancelAll, 0, i as i128), &[("a", None)]);
        }
        let (_, refused) = judge(&mut book, &cmd("c0", Kind::CancelAll, 0, 0), &[("a", None)]);
        assert!(refused.is_empty(), "the oldest id was forgotten");
        let last = &ids[DEDUP_CAPACITY];
        let (_, refused) = judge(&mut book, &cmd(last, Kind::CancelAll, 0, 0), &[("a", None)]);
        assert_eq!(refused, vec![(0, Status::Duplicate)]);
    }
}
