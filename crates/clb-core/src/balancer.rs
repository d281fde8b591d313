//! The balancer state machine: one per node and namespace.

use std::collections::{HashMap, VecDeque};

use rand_core::Rng;

use crate::config::{Config, ConfigError, validate_address, validate_node_id};
use crate::event::{Event, HoldReason, MemberCount, RoundEvent, RoundOutcome};
use crate::member::{MemberRecord, MemberTable};
use crate::report::{ClusterView, NodeId, Report, TieBreaker, unit_f64};
use crate::round::{DiscardReason, Round, collect};
use crate::safety::{Settle, ShedPlan, hard_cap};
use crate::strategy::{self, Deficit};
use crate::time::Millis;

/// Something the driver must do for the balancer.
///
/// Deliberately not `#[non_exhaustive]`: a driver must handle every action,
/// so a new one is a breaking change that the compiler points out.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Read this node's resource count and answer with
    /// [`Balancer::handle_count`].
    ReadCount,
    /// Publish this report to the backend: store
    /// [`wire::encode_in(&report, namespace)`](crate::wire::encode_in) as
    /// this node's value
    /// (fire and forget: a failed publish shows up to others as a stale
    /// report).
    Publish(Report),
    /// Fetch the namespace's members as the backend holds them and answer
    /// with [`Balancer::handle_view`]. Always comes after the `Publish` of
    /// the same tick.
    FetchView,
    /// Shed this many resources and answer with [`Balancer::handle_shed_done`].
    Shed {
        /// How many.
        n: u64,
        /// Where to steer them: under-target members, each with how many of
        /// the `n` to send there (in proportion to its deficit). Empty when
        /// no member advertises an address or the strategy does not steer.
        hints: Vec<Hint>,
    },
}

/// Steer `n` of a shed batch's clients to `address`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hint {
    /// An under-target member's advertised address.
    pub address: String,
    /// How many of the batch to send there.
    pub n: u64,
}

/// This node's `count()` failed, panicked or timed out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CountFailed;

/// The backend could not deliver a view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ViewFailed;

/// `shed()` failed, panicked or timed out; what it closed is unknown and
/// counted as 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShedFailed;

/// The decision state machine of one node in one namespace.
///
/// It never reads a clock, a socket or a global RNG. A driver feeds it inputs
/// and carries out what it asks, in this loop:
///
/// 1. Sleep until [`poll_timeout`](Self::poll_timeout) (or until an answer
///    arrives), then call [`handle_timeout`](Self::handle_timeout).
/// 2. Drain [`poll_action`](Self::poll_action) until `None`, carrying out each
///    [`Action`] in order. Answers come back through `handle_count`,
///    `handle_view` and `handle_shed_done`; after each, drain again.
/// 3. Drain [`poll_event`](Self::poll_event) for logs, metrics and
///    subscribers.
///
/// At most one `ReadCount`, one `FetchView` and one `Shed` are outstanding at
/// a time; the driver **must** answer each exactly once (a timeout is a
/// failure answer), or the balancer waits forever for it.
///
/// ```
/// use clb_core::{Action, Balancer, Config, Millis};
/// use rand_chacha::{ChaCha8Rng, rand_core::SeedableRng};
///
/// let mut b = Balancer::new("a".into(), Config::classic(), Millis(0), ChaCha8Rng::seed_from_u64(1))?;
/// b.handle_timeout(Millis(0));
/// assert_eq!(b.poll_action(), Some(Action::ReadCount));
/// b.handle_count(Millis(0), Ok(7));
/// assert!(matches!(b.poll_action(), Some(Action::Publish(r)) if r.count == 7));
/// # Ok::<(), clb_core::ConfigError>(())
/// ```
#[derive(Debug)]
pub struct Balancer<R> {
    config: Config,
    node: NodeId,
    address: Option<String>,
    tie_breaker: TieBreaker,
    rng: R,

    seq: u64,
    next_publish: Millis,
    next_round: Millis,
    /// A count read is outstanding, asked at this time.
    count_asked_at: Option<Millis>,
    /// A round is due since this time; it needs a count asked at or after it.
    round_due: Option<Millis>,
    /// The round's own report, waiting for the view.
    round_report: Option<Report>,
    view_outstanding: bool,
    /// Whether the membership this balancer found at start is known (see
    /// [`Settle::baseline`]).
    baseline_taken: bool,
    shed_outstanding: Option<u64>,

    settle: Settle,
    plan: ShedPlan,
    rounds: u64,
    /// The proportional hysteresis state, from the last complete round.
    rebalancing: bool,
    /// Admission control from the last complete round.
    accept_up_to: Option<u64>,
    /// Steering candidates from the last complete round.
    deficits: Vec<Deficit>,
    /// Addresses to name in refusals until the next round, drawn in
    /// proportion to the deficits.
    refusal_hints: Vec<String>,
    /// Decodes and deduplicates what the backend holds.
    members: MemberTable,
    /// Every member seen in a view (this node included) and when last: the
    /// quorum's memory. A member that left gracefully is removed at once.
    seen: HashMap<NodeId, Millis>,
    /// The last count read, for [`Balancer::accepting`].
    last_count: u64,

    actions: VecDeque<Action>,
    events: VecDeque<Event>,
}

impl<R: Rng> Balancer<R> {
    /// A balancer for `node`, started at `now`: it publishes at once and
    /// decides its first round one `round_duration` later. The tie breaker is
    /// drawn from `rng` here, once for the life of the balancer.
    pub fn new(node: NodeId, config: Config, now: Millis, mut rng: R) -> Result<Self, ConfigError> {
        config.validate()?;
        validate_node_id(node.as_str())?;
        let tie_breaker = TieBreaker::random(&mut rng);
        Ok(Balancer {
            next_publish: now,
            next_round: now + config.round_duration,
            config,
            node,
            address: None,
            tie_breaker,
            rng,
            seq: 0,
            count_asked_at: None,
            round_due: None,
            round_report: None,
            view_outstanding: false,
            baseline_taken: false,
            shed_outstanding: None,
            settle: Settle::default(),
            plan: ShedPlan::default(),
            rounds: 0,
            rebalancing: false,
            accept_up_to: None,
            deficits: Vec::new(),
            refusal_hints: Vec::new(),
            members: MemberTable::new(),
            seen: HashMap::new(),
            last_count: 0,
            actions: VecDeque::new(),
            events: VecDeque::new(),
        })
    }

    /// Sets the address this node's clients connect to, advertised in every
    /// report from the next publish on. Refused (and nothing changed) if it
    /// does not fit [`validate_address`].
    pub fn set_address(&mut self, address: Option<String>) -> Result<(), ConfigError> {
        if let Some(a) = &address {
            validate_address(a)?;
        }
        self.address = address;
        Ok(())
    }

    /// Names the namespace this balancer balances: from now on, a member
    /// whose report names another one discards the round (a backend mixing
    /// namespaces). Reports that name none (the previous release's) are
    /// taken as they are.
    pub fn set_namespace(&mut self, namespace: &str) -> Result<(), ConfigError> {
        crate::config::validate_namespace(namespace)?;
        self.members = MemberTable::for_namespace(namespace);
        Ok(())
    }

    /// Replaces the tie breaker (tests and the simulator's explicit inputs).
    pub fn set_tie_breaker(&mut self, tie_breaker: TieBreaker) {
        self.tie_breaker = tie_breaker;
    }

    /// This node's id.
    pub fn node(&self) -> &NodeId {
        &self.node
    }

    /// The validated configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// This balancer's tie breaker.
    pub fn tie_breaker(&self) -> TieBreaker {
        self.tie_breaker
    }

    /// How many rounds have ended (any outcome).
    pub fn num_rounds(&self) -> u64 {
        self.rounds
    }

    /// Whether this node, holding `count` resources now, should accept a new
    /// one (SPEC §4 admission control): false only while it is above its
    /// target in an active rebalance. Always true for `classic`.
    pub fn admits(&self, count: u64) -> bool {
        self.accept_up_to.is_none_or(|limit| count <= limit)
    }

    /// [`admits`](Self::admits) with the last count this balancer read.
    pub fn accepting(&self) -> bool {
        self.admits(self.last_count)
    }

    /// The admission limit from the last complete round: above this count
    /// the node refuses new resources. `None` accepts everything.
    pub fn accept_up_to(&self) -> Option<u64> {
        self.accept_up_to
    }

    /// Whether a proportional rebalance is in progress.
    pub fn rebalancing(&self) -> bool {
        self.rebalancing
    }

    /// Under-target members with an address, from the last complete round:
    /// where to steer new or shed clients, weighted by deficit.
    pub fn deficits(&self) -> &[Deficit] {
        &self.deficits
    }

    /// Addresses of under-target members to name when refusing a new
    /// resource (the 503's hint), drawn with this balancer's RNG in
    /// proportion to each member's room, until the next round. Use them in
    /// turn; empty when there is nowhere to steer.
    pub fn refusal_hints(&self) -> &[String] {
        &self.refusal_hints
    }

    /// Node ids that two live processes have been publishing under for two
    /// rounds or more: a configuration error to report loudly. Rounds are
    /// discarded from the first view that shows it.
    pub fn duplicate_ids(&self, now: Millis) -> impl Iterator<Item = &NodeId> + '_ {
        self.members
            .duplicate_ids(now, self.config.round_duration * 2)
    }

    /// Whether another live process publishes under this node's own id (see
    /// [`duplicate_ids`](Self::duplicate_ids)).
    pub fn own_id_duplicated(&self, now: Millis) -> bool {
        let me = &self.node;
        self.members
            .duplicate_ids(now, self.config.round_duration * 2)
            .any(|n| n == me)
    }

    /// What is still planned to be shed in this round.
    pub fn planned(&self) -> u64 {
        self.plan.remaining() + self.shed_outstanding.unwrap_or(0)
    }

    /// Call when `now >= poll_timeout()`; calling early is harmless.
    pub fn handle_timeout(&mut self, now: Millis) {
        let interval = self.config.publish_interval();
        let mut want_count = false;
        if now >= self.next_publish {
            while self.next_publish <= now {
                self.next_publish = self.next_publish + interval;
            }
            want_count = true;
        }
        if now >= self.next_round {
            while self.next_round <= now {
                self.next_round = self.next_round + self.config.round_duration;
            }
            self.round_due = Some(now);
            want_count = true;
        }
        if want_count {
            self.ask_count(now);
        }
        self.shed_due(now);
    }

    /// The answer to [`Action::ReadCount`].
    pub fn handle_count(&mut self, now: Millis, count: Result<u64, CountFailed>) {
        let asked_at = self.count_asked_at.take().unwrap_or(now);
        let serves_round = self.round_due.is_some_and(|due| asked_at >= due);
        match count {
            Ok(n) => {
                self.last_count = n;
                self.seq += 1;
                let report = Report {
                    node: self.node.clone(),
                    count: n,
                    tie_breaker: self.tie_breaker,
                    weight: self.config.weight,
                    address: self.address.clone(),
                    seq: self.seq,
                    rebalancing: self.rebalancing,
                };
                self.actions.push_back(Action::Publish(report.clone()));
                if serves_round && !self.view_outstanding {
                    self.round_due = None;
                    self.round_report = Some(report);
                    self.view_outstanding = true;
                    self.actions.push_back(Action::FetchView);
                } else if !self.baseline_taken && !self.view_outstanding {
                    // Learn who is there at start, so that a change before the
                    // first round is seen as one.
                    self.view_outstanding = true;
                    self.actions.push_back(Action::FetchView);
                }
            }
            Err(CountFailed) if serves_round => {
                self.round_due = None;
                let outcome = RoundOutcome::Discarded {
                    reason: DiscardReason::CountFailed,
                };
                self.end_round(now, None, None, Vec::new(), outcome);
            }
            Err(CountFailed) => {}
        }
        // A read asked before the round's tick is not fresh enough for it.
        if self.round_due.is_some() {
            self.ask_count(now);
        }
    }

    /// The answer to [`Action::FetchView`]: what the backend holds for the
    /// namespace, raw. Assembles the view and decides the round.
    pub fn handle_view(&mut self, now: Millis, records: Result<&[MemberRecord], ViewFailed>) {
        if !self.view_outstanding {
            return;
        }
        self.view_outstanding = false;
        let view = records.map(|r| self.members.assemble(now, r, self.config.round_duration));
        if let Ok(view) = &view {
            self.remember(now, view);
        }
        let view = view.as_ref();
        let Some(own) = self.round_report.take() else {
            if let Ok(view) = view {
                let mut ids: Vec<&NodeId> = view.members.iter().map(|m| &m.node).collect();
                ids.push(&self.node);
                ids.sort();
                ids.dedup();
                self.settle.baseline(ids.into_iter());
                self.baseline_taken = true;
            }
            return;
        };
        let view = match view {
            Ok(view) => view,
            Err(&ViewFailed) => {
                let outcome = RoundOutcome::Discarded {
                    reason: DiscardReason::BackendFailed,
                };
                self.end_round(now, Some(own.count), None, Vec::new(), outcome);
                return;
            }
        };
        let round = collect(&own, view, self.config.round_duration)
            .and_then(|round| self.quorum(round.num_members()).map(|()| round));
        match round {
            Ok(round) => self.decide(now, round),
            Err(reason) => {
                let mut members: Vec<MemberCount> = view
                    .members
                    .iter()
                    .filter(|m| m.node != own.node)
                    .map(|m| MemberCount {
                        node: m.node.clone(),
                        count: m.report.as_ref().map(|r| r.count),
                    })
                    .collect();
                members.push(MemberCount {
                    node: own.node.clone(),
                    count: Some(own.count),
                });
                members.sort_by(|a, b| a.node.cmp(&b.node));
                let outcome = RoundOutcome::Discarded { reason };
                self.end_round(now, Some(own.count), None, members, outcome);
            }
        }
    }

    /// The answer to [`Action::Shed`]: `Ok(n)` is what the resource says it
    /// actually shed.
    pub fn handle_shed_done(&mut self, now: Millis, shed: Result<u64, ShedFailed>) {
        let requested = self.shed_outstanding.take().unwrap_or(0);
        match shed {
            Ok(shed) => self.events.push_back(Event::ShedDone { requested, shed }),
            Err(ShedFailed) => {
                let cancelled = self.plan.cancel();
                self.events.push_back(Event::ShedFailed {
                    requested,
                    cancelled,
                });
            }
        }
        self.shed_due(now);
    }

    /// The next thing to do, in order; `None` when there is nothing.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The next event to report, in order.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When to call [`handle_timeout`](Self::handle_timeout) next.
    pub fn poll_timeout(&self) -> Option<Millis> {
        let mut t = self.next_publish.min(self.next_round);
        if self.shed_outstanding.is_none() {
            if let Some(due) = self.plan.next_due() {
                t = t.min(due);
            }
        }
        Some(t)
    }

    fn ask_count(&mut self, now: Millis) {
        if self.count_asked_at.is_none() {
            self.count_asked_at = Some(now);
            self.actions.push_back(Action::ReadCount);
        }
    }

    fn shed_due(&mut self, now: Millis) {
        if self.shed_outstanding.is_some() {
            return;
        }
        if let Some(n) = self.plan.take_due(now) {
            self.shed_outstanding = Some(n);
            let hints = apportion(n, &self.deficits);
            self.actions.push_back(Action::Shed { n, hints });
        }
    }

    /// Updates the quorum's memory from a view: who is here now, who the
    /// backend knows but considers failed, who left gracefully, and who
    /// has been gone longer than the memory. Only a node that holds a
    /// majority forgets: the minority side of a long partition never
    /// shrinks the cluster down to itself.
    fn remember(&mut self, now: Millis, view: &ClusterView) {
        if self.config.quorum_rounds == 0 {
            return;
        }
        let members = view.members.iter().map(|m| &m.node);
        for node in members.clone().chain([&self.node]).chain(&view.lost) {
            self.seen.insert(node.clone(), now);
        }
        for node in &view.left {
            if *node != self.node {
                self.seen.remove(node);
            }
        }
        // The table lists each node id once; this node may be among them.
        let live = view.members.len() + usize::from(!members.clone().any(|n| *n == self.node));
        if live * 2 > self.seen.len() {
            let memory = self
                .config
                .round_duration
                .saturating_mul(self.config.quorum_rounds);
            self.seen
                .retain(|_, at| now.saturating_since(*at) <= memory);
        }
    }

    /// Whether a complete round of `live` members (this node included) may
    /// be decided: only if they are a strict majority of the members
    /// remembered ([`Self::remember`] has just counted them all in).
    fn quorum(&self, live: usize) -> Result<(), DiscardReason> {
        let known = self.seen.len();
        if self.config.quorum_rounds > 0 && live * 2 <= known {
            return Err(DiscardReason::NoQuorum {
                live: live as u64,
                known: known as u64,
            });
        }
        Ok(())
    }

    fn decide(&mut self, now: Millis, round: Round) {
        let members = round.entries().iter().map(|e| &e.node);
        let settling = self.settle.observe(members, self.config.settle_rounds);
        let decision = strategy::decide(&round, &self.config, self.rebalancing);
        self.rebalancing = decision.rebalancing;
        self.accept_up_to = if settling > 0 {
            // Membership is changing and targets are moving: refuse only
            // what is clearly overloaded, above the trigger band.
            let dev = self.config.allowed_average_deviation_percent;
            decision
                .accept_up_to
                .map(|_| (decision.target * (1.0 + dev / 100.0)).floor() as u64)
        } else {
            decision.accept_up_to
        };
        self.deficits = decision.deficits;
        self.draw_refusal_hints();
        let own_count = round.me().count;
        let amount = hard_cap(decision.amount, own_count, self.config.max_shed_fraction);
        let outcome = if amount == 0 {
            RoundOutcome::Balanced
        } else if settling > 0 {
            RoundOutcome::Held {
                would_shed: amount,
                reason: HoldReason::Settling {
                    rounds_left: settling,
                },
            }
        } else if self.config.dry_run {
            RoundOutcome::Held {
                would_shed: amount,
                reason: HoldReason::DryRun,
            }
        } else {
            RoundOutcome::Shed { n: amount }
        };
        let members = round
            .into_entries()
            .into_iter()
            .map(|e| MemberCount {
                node: e.node,
                count: Some(e.count),
            })
            .collect();
        self.end_round(
            now,
            Some(own_count),
            Some(decision.target),
            members,
            outcome,
        );
    }

    /// How many refusal hints are drawn per round: enough that consecutive
    /// refusals spread over the deficits as they should.
    const REFUSAL_HINTS: usize = 16;

    fn draw_refusal_hints(&mut self) {
        self.refusal_hints.clear();
        let total: f64 = self.deficits.iter().map(|d| d.deficit).sum();
        if total <= 0.0 {
            return;
        }
        for _ in 0..Self::REFUSAL_HINTS {
            let mut x = unit_f64(&mut self.rng) * total;
            let mut pick = self.deficits.last();
            for d in &self.deficits {
                if x < d.deficit {
                    pick = Some(d);
                    break;
                }
                x -= d.deficit;
            }
            if let Some(d) = pick {
                self.refusal_hints.push(d.address.clone());
            }
        }
    }

    fn end_round(
        &mut self,
        now: Millis,
        count: Option<u64>,
        target: Option<f64>,
        members: Vec<MemberCount>,
        outcome: RoundOutcome,
    ) {
        self.rounds += 1;
        if target.is_none() {
            // No complete picture: fail open rather than refuse on stale data.
            self.accept_up_to = None;
            self.deficits.clear();
            self.refusal_hints.clear();
        }
        // A new round replaces whatever the last one planned: "stop" stops.
        self.plan.cancel();
        if let RoundOutcome::Shed { n } = outcome {
            let window = self
                .config
                .round_duration
                .mul_f64(self.config.pacing_window);
            self.plan = ShedPlan::new(
                now,
                n,
                window,
                self.config.pacing_max_batches,
                &mut self.rng,
            );
        }
        self.events.push_back(Event::Round(RoundEvent {
            round: self.rounds,
            at: now,
            count,
            target,
            members,
            accepting: self.admits(count.unwrap_or(self.last_count)),
            accept_up_to: self.accept_up_to,
            rebalancing: self.rebalancing,
            outcome,
        }));
        self.shed_due(now);
    }
}

/// Splits `n` over `deficits` in proportion, by largest remainder, so the
/// parts sum to `n` exactly. Empty when there is nowhere to steer.
fn apportion(n: u64, deficits: &[Deficit]) -> Vec<Hint> {
    let total: f64 = deficits.iter().map(|d| d.deficit).sum();
    if n == 0 || total <= 0.0 {
        return Vec::new();
    }
    let shares: Vec<f64> = deficits
        .iter()
        .map(|d| n as f64 * d.deficit / total)
        .collect();
    let mut parts: Vec<u64> = shares.iter().map(|s| s.floor() as u64).collect();
    let mut left = n.saturating_sub(parts.iter().sum());
    let mut order: Vec<usize> = (0..shares.len()).collect();
    order.sort_by(|&a, &b| {
        (shares[b] - shares[b].floor()).total_cmp(&(shares[a] - shares[a].floor()))
    });
    for &i in order.iter().cycle().take(shares.len() * 2) {
        if left == 0 {
            break;
        }
        parts[i] += 1;
        left -= 1;
    }
    deficits
        .iter()
        .zip(parts)
        .filter(|(_, n)| *n > 0)
        .map(|(d, n)| Hint {
            address: d.address.clone(),
            n,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rand_chacha::ChaCha8Rng;
    use rand_core::SeedableRng;

    use super::*;

    const ROUND_MS: u64 = 1000;

    fn balancer(config: Config) -> Balancer<ChaCha8Rng> {
        let config = Config {
            round_duration: Duration::from_millis(ROUND_MS),
            ..config
        };
        Balancer::new(
            "me".into(),
            config,
            Millis(0),
            ChaCha8Rng::seed_from_u64(0xC1B),
        )
        .unwrap()
    }

    fn view(others: &[(&str, u64, u64)]) -> Vec<MemberRecord> {
        others
            .iter()
            .map(|&(id, count, age_ms)| {
                let report = Report {
                    node: id.into(),
                    count,
                    tie_breaker: TieBreaker::new(0.5),
                    weight: 1.0,
                    address: None,
                    seq: 1,
                    rebalancing: false,
                };
                MemberRecord::from_report(&report, Duration::from_millis(age_ms))
            })
            .collect()
    }

    /// Answers every action at `now` with `count` and `view`; returns the
    /// actions seen and the round outcomes.
    fn drive(
        b: &mut Balancer<ChaCha8Rng>,
        now: Millis,
        count: Result<u64, CountFailed>,
        view: &[MemberRecord],
    ) -> (Vec<Action>, Vec<RoundOutcome>) {
        b.handle_timeout(now);
        let mut seen = Vec::new();
        while let Some(a) = b.poll_action() {
            seen.push(a.clone());
            match a {
                Action::ReadCount => b.handle_count(now, count),
                Action::Publish(_) => {}
                Action::FetchView => b.handle_view(now, Ok(view)),
                Action::Shed { n, .. } => b.handle_shed_done(now, Ok(n)),
            }
        }
        let outcomes = std::iter::from_fn(|| b.poll_event())
            .filter_map(|e| match e {
                Event::Round(r) => Some(r.outcome),
                _ => None,
            })
            .collect();
        (seen, outcomes)
    }

    #[test]
    fn publishes_four_times_a_round_and_decides_once() {
        let mut b = balancer(Config::classic());
        let v = view(&[("b", 0, 0)]);
        let mut publishes = 0;
        let mut rounds = 0;
        let mut now = Millis(0);
        while now.0 <= 2 * ROUND_MS {
            let (actions, outcomes) = drive(&mut b, now, Ok(100), &v);
            publishes += actions
                .iter()
                .filter(|a| matches!(a, Action::Publish(_)))
                .count();
            rounds += outcomes.len();
            now = b.poll_timeout().unwrap();
        }
        assert_eq!(publishes, 9, "t = 0, 250, ..., 2000");
        assert_eq!(rounds, 2, "t = 1000 and 2000");
    }

    #[test]
    fn round_uses_a_count_read_at_or_after_the_tick() {
        let mut b = balancer(Config::classic());
        // A publish read asked at 750 is still outstanding at the round tick.
        b.handle_timeout(Millis(0));
        while b.poll_action().is_some() {}
        b.handle_count(Millis(0), Ok(1));
        assert!(matches!(b.poll_action(), Some(Action::Publish(_))));
        assert_eq!(
            b.poll_action(),
            Some(Action::FetchView),
            "the start baseline"
        );
        b.handle_view(Millis(0), Ok(&view(&[("b", 0, 0)])[..]));
        b.handle_timeout(Millis(750));
        assert_eq!(b.poll_action(), Some(Action::ReadCount));
        b.handle_timeout(Millis(1000));
        assert_eq!(b.poll_action(), None, "one read outstanding at a time");
        b.handle_count(Millis(1001), Ok(5));
        assert!(matches!(b.poll_action(), Some(Action::Publish(r)) if r.count == 5));
        assert_eq!(
            b.poll_action(),
            Some(Action::ReadCount),
            "read again for the round"
        );
        b.handle_count(Millis(1002), Ok(100));
        assert!(matches!(b.poll_action(), Some(Action::Publish(r)) if r.count == 100));
        assert_eq!(b.poll_action(), Some(Action::FetchView));
        b.handle_view(Millis(1003), Ok(&view(&[("b", 0, 0)])[..]));
        assert_eq!(
            b.poll_action(),
            Some(Action::Shed {
                n: 25,
                hints: vec![]
            })
        );
    }

    /// Drives `b` from `now` until it has ended `rounds` rounds on `records`,
    /// returning the outcomes and the time reached.
    fn rounds_on(
        b: &mut Balancer<ChaCha8Rng>,
        mut now: Millis,
        count: u64,
        records: &[MemberRecord],
        rounds: usize,
    ) -> (Vec<RoundOutcome>, Millis) {
        let mut outcomes = Vec::new();
        while outcomes.len() < rounds {
            outcomes.extend(drive(b, now, Ok(count), records).1);
            now = b.poll_timeout().unwrap();
        }
        (outcomes, now)
    }

    /// `ids` as the backend hands them over with a marker value
    /// ([`crate::wire::LEFT`] or [`crate::wire::LOST`]) in place of a report.
    fn marked(ids: &[&str], value: &str) -> Vec<MemberRecord> {
        ids.iter()
            .map(|&id| MemberRecord {
                node: id.into(),
                incarnation: 0,
                value: value.into(),
                age: Duration::ZERO,
            })
            .collect()
    }

    fn all_lack_quorum(outcomes: &[RoundOutcome], live: u64, known: u64) -> bool {
        let want = RoundOutcome::Discarded {
            reason: DiscardReason::NoQuorum { live, known },
        };
        outcomes.iter().all(|o| *o == want)
    }

    fn quorum_config() -> Config {
        Config {
            settle_rounds: 0,
            quorum_rounds: 10,
            ..Config::proportional()
        }
    }

    #[test]
    fn a_minority_decides_nothing_and_a_majority_forgets_the_lost_after_the_memory() {
        let mut b = balancer(quorum_config());
        let five = view(&[("b", 0, 0), ("c", 100, 0), ("d", 100, 0), ("e", 100, 0)]);
        let (_, now) = rounds_on(&mut b, Millis(0), 100, &five, 2);
        // Cut off with b: two of five, far out of balance, and yet no shed.
        let two = view(&[("b", 0, 0)]);
        let (outcomes, now) = rounds_on(&mut b, now, 400, &two, 3);
        assert!(all_lack_quorum(&outcomes, 2, 5), "{outcomes:?}");
        // d and e crashed for good; with b and c this node is a majority
        // and decides, and after ten rounds it forgets d and e ...
        let three = view(&[("b", 0, 0), ("c", 100, 0)]);
        let (outcomes, now) = rounds_on(&mut b, now, 400, &three, 11);
        assert!(
            matches!(outcomes[0], RoundOutcome::Shed { .. }),
            "{outcomes:?}"
        );
        // ... so that losing c as well leaves two of three: still a majority.
        let (outcomes, _) = rounds_on(&mut b, now, 400, &two, 1);
        assert!(
            matches!(outcomes[0], RoundOutcome::Shed { .. }),
            "{outcomes:?}"
        );
    }

    #[test]
    fn a_minority_never_forgets_the_others_however_long_the_partition() {
        let mut b = balancer(quorum_config());
        let five = view(&[("b", 0, 0), ("c", 100, 0), ("d", 100, 0), ("e", 100, 0)]);
        let (_, now) = rounds_on(&mut b, Millis(0), 100, &five, 2);
        let two = view(&[("b", 0, 0)]);
        // Five times the memory: still two of five.
        let (outcomes, _) = rounds_on(&mut b, now, 400, &two, 50);
        assert!(all_lack_quorum(&outcomes, 2, 5), "{outcomes:?}");
    }

    #[test]
    fn a_restarted_node_counts_the_members_its_backend_knows_as_lost() {
        // A fresh balancer (a restart) inside a minority: it never saw c, d
        // and e, but gossip still knows them as failed.
        let mut b = balancer(quorum_config());
        let mut records = view(&[("b", 0, 0)]);
        records.extend(marked(&["c", "d", "e"], crate::wire::LOST));
        let (outcomes, _) = rounds_on(&mut b, Millis(0), 400, &records, 3);
        assert!(all_lack_quorum(&outcomes, 2, 5), "{outcomes:?}");
    }

    #[test]
    fn a_majority_decides_and_members_that_left_gracefully_do_not_count() {
        let mut b = balancer(quorum_config());
        let five = view(&[("b", 0, 0), ("c", 100, 0), ("d", 100, 0), ("e", 100, 0)]);
        let (_, now) = rounds_on(&mut b, Millis(0), 100, &five, 2);
        let three = view(&[("b", 0, 0), ("c", 100, 0)]);
        let (outcomes, now) = rounds_on(&mut b, now, 400, &three, 1);
        assert!(
            matches!(outcomes[0], RoundOutcome::Shed { .. }),
            "{outcomes:?}"
        );
        // d and e left gracefully (their values are `left`), and c too: a
        // scale-down, not a partition. The two left decide at once.
        let mut scaled = view(&[("b", 0, 0)]);
        scaled.extend(marked(&["c", "d", "e"], crate::wire::LEFT));
        let (outcomes, _) = rounds_on(&mut b, now, 400, &scaled, 1);
        assert!(
            matches!(outcomes[0], RoundOutcome::Shed { .. }),
            "{outcomes:?}"
        );
    }

    #[test]
    fn the_classic_preset_has_no_quorum_rule() {
        let mut b = balancer(Config::classic());
        let five = view(&[("b", 0, 0), ("c", 0, 0), ("d", 0, 0), ("e", 0, 0)]);
        let (_, now) = rounds_on(&mut b, Millis(0), 0, &five, 1);
        let (outcomes, _) = rounds_on(&mut b, now, 100, &view(&[("b", 0, 0)]), 1);
        assert!(
            matches!(outcomes[0], RoundOutcome::Shed { .. }),
            "{outcomes:?}"
        );
    }

    #[test]
    fn seq_grows_with_every_publish() {
        let mut b = balancer(Config::classic());
        let mut seqs = Vec::new();
        let mut now = Millis(0);
        for _ in 0..5 {
            let (actions, _) = drive(&mut b, now, Ok(1), &view(&[]));
            seqs.extend(actions.iter().filter_map(|a| match a {
                Action::Publish(r) => Some(r.seq),
                _ => None,
            }));
            now = b.poll_timeout().unwrap();
        }
        assert_eq!(seqs, [1, 2, 3, 4, 5]);
    }

    #[test]
    fn count_failure_discards_the_round_and_keeps_going() {
        let mut b = balancer(Config::classic());
        let v = view(&[("b", 0, 0)]);
        drive(&mut b, Millis(0), Ok(100), &v);
        let (_, outcomes) = drive(&mut b, Millis(1000), Err(CountFailed), &v);
        assert_eq!(
            outcomes,
            [RoundOutcome::Discarded {
                reason: DiscardReason::CountFailed
            }]
        );
        let (_, outcomes) = drive(&mut b, Millis(2000), Ok(100), &v);
        assert_eq!(outcomes, [RoundOutcome::Shed { n: 25 }]);
    }

    #[test]
    fn stale_member_discards_and_nothing_is_shed() {
        let mut b = balancer(Config::classic());
        let (actions, outcomes) = drive(&mut b, Millis(1000), Ok(100), &view(&[("b", 0, 1001)]));
        assert!(matches!(
            outcomes.as_slice(),
            [RoundOutcome::Discarded {
                reason: DiscardReason::StaleReport { .. }
            }]
        ));
        assert!(!actions.iter().any(|a| matches!(a, Action::Shed { .. })));
    }

    #[test]
    fn backend_failure_discards() {
        let mut b = balancer(Config::classic());
        b.handle_timeout(Millis(1000));
        assert_eq!(b.poll_action(), Some(Action::ReadCount));
        b.handle_count(Millis(1000), Ok(100));
        assert!(matches!(b.poll_action(), Some(Action::Publish(_))));
        assert_eq!(b.poll_action(), Some(Action::FetchView));
        b.handle_view(Millis(1000), Err(ViewFailed));
        assert_eq!(b.poll_action(), None);
        assert!(matches!(
            b.poll_event(),
            Some(Event::Round(RoundEvent {
                outcome: RoundOutcome::Discarded {
                    reason: DiscardReason::BackendFailed
                },
                ..
            }))
        ));
    }

    #[test]
    fn settle_holds_after_a_membership_change() {
        let mut b = balancer(Config {
            settle_rounds: 2,
            pacing_window: 0.0,
            ..Config::classic()
        });
        let two = view(&[("b", 0, 0)]);
        let three = view(&[("b", 0, 0), ("c", 0, 0)]);
        let outcome = |b: &mut Balancer<_>, t: u64, v: &[MemberRecord]| {
            drive(b, Millis(t), Ok(100), v).1.remove(0)
        };
        // The first round sets the baseline: nothing to settle.
        assert_eq!(outcome(&mut b, 1000, &two), RoundOutcome::Shed { n: 25 });
        // A join: this round and the next are held, then shedding resumes.
        assert!(matches!(
            outcome(&mut b, 2000, &three),
            RoundOutcome::Held {
                reason: HoldReason::Settling { rounds_left: 2 },
                ..
            }
        ));
        assert!(matches!(
            outcome(&mut b, 3000, &three),
            RoundOutcome::Held {
                reason: HoldReason::Settling { rounds_left: 1 },
                ..
            }
        ));
        assert!(matches!(
            outcome(&mut b, 4000, &three),
            RoundOutcome::Shed { .. }
        ));
        // A leave settles too.
        assert!(matches!(
            outcome(&mut b, 5000, &two),
            RoundOutcome::Held { .. }
        ));
    }

    #[test]
    fn a_change_between_start_and_the_first_round_is_settled() {
        let mut b = balancer(Config {
            settle_rounds: 2,
            pacing_window: 0.0,
            ..Config::classic()
        });
        b.handle_timeout(Millis(0));
        assert_eq!(b.poll_action(), Some(Action::ReadCount));
        b.handle_count(Millis(0), Ok(100));
        assert!(matches!(b.poll_action(), Some(Action::Publish(_))));
        assert_eq!(b.poll_action(), Some(Action::FetchView));
        b.handle_view(Millis(0), Ok(&view(&[("b", 0, 0)])[..]));
        // By the first round a third member has joined: hold.
        let (_, outcomes) = drive(
            &mut b,
            Millis(1000),
            Ok(100),
            &view(&[("b", 0, 0), ("c", 0, 0)]),
        );
        assert!(
            matches!(outcomes[0], RoundOutcome::Held { .. }),
            "{outcomes:?}"
        );
    }

    #[test]
    fn dry_run_decides_but_sheds_nothing() {
        let mut b = balancer(Config {
            dry_run: true,
            ..Config::classic()
        });
        let (actions, outcomes) = drive(&mut b, Millis(1000), Ok(100), &view(&[("b", 0, 0)]));
        assert_eq!(
            outcomes,
            [RoundOutcome::Held {
                would_shed: 25,
                reason: HoldReason::DryRun
            }]
        );
        assert!(!actions.iter().any(|a| matches!(a, Action::Shed { .. })));
    }

    #[test]
    fn hard_cap_limits_the_round() {
        let mut b = balancer(Config {
            max_shed_fraction: Some(0.1),
            ..Config::classic()
        });
        let (_, outcomes) = drive(&mut b, Millis(1000), Ok(100), &view(&[("b", 0, 0)]));
        assert_eq!(outcomes, [RoundOutcome::Shed { n: 10 }]);
    }

    #[test]
    fn paced_shed_comes_in_batches_within_the_window_and_a_new_round_cancels_the_rest() {
        let mut b = balancer(Config {
            pacing_window: 0.5,
            pacing_max_batches: 5,
            max_shed_count: None,
            ..Config::classic()
        });
        let v = view(&[("b", 0, 0)]);
        drive(&mut b, Millis(1000), Ok(1000), &v);
        let mut batches = Vec::new();
        let mut now = b.poll_timeout().unwrap();
        while now.0 < 1500 {
            let (actions, _) = drive(&mut b, now, Ok(1000), &v);
            batches.extend(actions.iter().filter_map(|a| match a {
                Action::Shed { n, .. } => Some((now.0, *n)),
                _ => None,
            }));
            now = b.poll_timeout().unwrap();
        }
        // 250 decided (50% of 500), in 5 batches of 50 over [1000, 1500).
        assert_eq!(batches.iter().map(|b| b.1).sum::<u64>(), 250, "{batches:?}");
        assert!(batches.len() >= 4, "{batches:?}");
        assert!(batches.iter().all(|&(t, _)| (1000..1500).contains(&t)));

        // A slow resource: the first batch is still outstanding when the next
        // round says "balanced", which drops whatever is left of the plan.
        let mut b = balancer(Config {
            pacing_window: 0.9,
            max_shed_count: None,
            ..Config::classic()
        });
        drive(&mut b, Millis(1000), Ok(1000), &v);
        let t = b.poll_timeout().unwrap();
        b.handle_timeout(t);
        let first = loop {
            match b.poll_action() {
                Some(Action::Shed { n, .. }) => break n,
                Some(Action::ReadCount) => b.handle_count(t, Ok(1000)),
                Some(_) => {}
                None => panic!("expected a batch"),
            }
        };
        assert_eq!(b.planned(), 250);
        b.handle_timeout(Millis(2000));
        assert_eq!(b.poll_action(), Some(Action::ReadCount));
        b.handle_count(Millis(2000), Ok(0));
        assert!(matches!(b.poll_action(), Some(Action::Publish(_))));
        assert_eq!(b.poll_action(), Some(Action::FetchView));
        b.handle_view(Millis(2000), Ok(&v[..]));
        assert_eq!(b.planned(), first, "only the outstanding batch is left");
        b.handle_shed_done(Millis(2001), Ok(first));
        b.handle_timeout(Millis(2500));
        assert!(std::iter::from_fn(|| b.poll_action()).all(|a| !matches!(a, Action::Shed { .. })));
        assert_eq!(b.planned(), 0);
    }

    #[test]
    fn two_live_processes_with_one_id_discard_every_round_and_are_reported() {
        let mut b = balancer(Config::classic());
        let twins = |id: &str| {
            let mut records = view(&[(id, 0, 0), (id, 81, 100)]);
            records[0].incarnation = 1;
            records[1].incarnation = 2;
            records
        };
        let mut records = twins("b");
        records.extend(view(&[("c", 0, 0)]));
        for t in [1000, 2000, 3000] {
            let (actions, outcomes) = drive(&mut b, Millis(t), Ok(100), &records);
            assert_eq!(
                outcomes,
                [RoundOutcome::Discarded {
                    reason: DiscardReason::DuplicateNode { node: "b".into() }
                }],
                "t = {t}"
            );
            assert!(!actions.iter().any(|a| matches!(a, Action::Shed { .. })));
        }
        let ids: Vec<&NodeId> = b.duplicate_ids(Millis(3000)).collect();
        assert_eq!(ids, [&NodeId::from("b")]);
        assert!(!b.own_id_duplicated(Millis(3000)));

        // Another process holds this node's own id: reported as such.
        let mut b = balancer(Config::classic());
        for t in [1000, 2000, 3000] {
            drive(&mut b, Millis(t), Ok(100), &twins("me"));
        }
        assert!(b.own_id_duplicated(Millis(3000)));
    }

    #[test]
    fn refusal_hints_name_under_target_members_in_proportion_to_their_room() {
        let mut b = balancer(Config {
            pacing_window: 0.0,
            settle_rounds: 0,
            ..Config::proportional()
        });
        let with_address = |id: &str, count: u64| {
            let report = Report {
                node: id.into(),
                count,
                tie_breaker: TieBreaker::new(0.5),
                weight: 1.0,
                address: Some(format!("{id}:1")),
                seq: 1,
                rebalancing: false,
            };
            MemberRecord::from_report(&report, Duration::ZERO)
        };
        // Targets 400: b has room for 400, c for 100 (fill levels aside).
        let records = [with_address("b", 0), with_address("c", 300)];
        drive(&mut b, Millis(1000), Ok(900), &records);
        let hints = b.refusal_hints();
        assert_eq!(hints.len(), Balancer::<ChaCha8Rng>::REFUSAL_HINTS);
        let to_b = hints.iter().filter(|h| *h == "b:1").count();
        assert!(hints.iter().all(|h| h == "b:1" || h == "c:1"), "{hints:?}");
        assert!(to_b >= hints.len() / 2, "b has most of the room: {hints:?}");
        // An incomplete round forgets them: no steering on stale data.
        drive(&mut b, Millis(2000), Err(CountFailed), &records);
        assert!(b.refusal_hints().is_empty());
    }

    #[test]
    fn failed_shed_cancels_the_rest_of_the_plan() {
        let mut b = balancer(Config {
            pacing_window: 0.5,
            max_shed_count: None,
            ..Config::classic()
        });
        drive(&mut b, Millis(1000), Ok(1000), &view(&[("b", 0, 0)]));
        let t = b.poll_timeout().unwrap();
        b.handle_timeout(t);
        let Some(Action::Shed { n, .. }) = b.poll_action() else {
            panic!("expected a batch");
        };
        b.handle_shed_done(t, Err(ShedFailed));
        let failed =
            std::iter::from_fn(|| b.poll_event()).find(|e| matches!(e, Event::ShedFailed { .. }));
        assert_eq!(
            failed,
            Some(Event::ShedFailed {
                requested: n,
                cancelled: 250 - n
            })
        );
        assert_eq!(b.planned(), 0);
    }
}
