//! The event loop: real cores, one virtual clock, a shared report table as
//! the backend, and the LB model moving shed clients.

use std::collections::{BTreeMap, HashMap};

use clb_core::{
    Action, Balancer, Event, Hint, MemberRecord, Millis, NodeId, Report, RoundOutcome, TieBreaker,
    wire,
};
use rand::{Rng, RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::lb::LbState;
use crate::scenario::{Setup, Step};
use crate::{RoundRecord, SimError, SimReport, SimSpec, metrics};

/// A guard against a core that keeps asking for work at one instant.
const MAX_STEPS_PER_INSTANT: usize = 100_000;

struct Node {
    id: NodeId,
    core: Option<Balancer<ChaCha8Rng>>,
    count: u64,
}

pub(crate) struct Engine<'a> {
    spec: &'a SimSpec,
    setup: Setup,
    rng: ChaCha8Rng,
    lb: LbState,
    nodes: Vec<Node>,
    /// The "backend": latest value per node, as published, and when it last
    /// changed. Like every backend it only holds bytes; each core decodes.
    reports: BTreeMap<NodeId, (String, Millis)>,
    /// Per node, which of its refusal hints the next refused client gets.
    hint_cursor: Vec<usize>,
    /// Node index by advertised address (a node's address is its id).
    by_address: HashMap<String, usize>,
    shed_acc: Vec<u64>,
    refusals: u64,
    forced: u64,
    lost: u64,
    /// Whether any round decided in the current round was not `Balanced`.
    restless: bool,
}

impl<'a> Engine<'a> {
    pub(crate) fn new(spec: &'a SimSpec, setup: Setup) -> Self {
        let nodes = setup
            .counts
            .iter()
            .enumerate()
            .map(|(i, &count)| Node {
                id: NodeId::new(format!("node-{i:05}")),
                core: None,
                count,
            })
            .collect::<Vec<_>>();
        let n = nodes.len();
        let by_address = nodes
            .iter()
            .enumerate()
            .map(|(i, node)| (node.id.to_string(), i))
            .collect();
        Engine {
            by_address,
            spec,
            setup,
            rng: ChaCha8Rng::seed_from_u64(spec.seed),
            lb: LbState::default(),
            nodes,
            reports: BTreeMap::new(),
            shed_acc: vec![0; n],
            hint_cursor: vec![0; n],
            refusals: 0,
            forced: 0,
            lost: 0,
            restless: false,
        }
    }

    pub(crate) fn run(mut self, mut progress: impl FnMut(u32, u32)) -> Result<SimReport, SimError> {
        let round_ms =
            u64::try_from(self.spec.config.round_duration.as_millis()).unwrap_or(u64::MAX);
        let clients: u64 = self.nodes.iter().map(|n| n.count).sum();
        for i in 0..self.nodes.len() {
            self.start_node(i, Millis(0))?;
        }

        let warmup = std::mem::take(&mut self.setup.warmup);
        let first = std::mem::take(&mut self.setup.first_round);
        let warmup_rounds = u32::try_from(warmup.len()).unwrap_or(u32::MAX);
        let total = warmup_rounds.saturating_add(self.spec.rounds);

        let mut records: Vec<RoundRecord> = Vec::with_capacity(self.spec.rounds as usize);
        let mut warmup_records: Vec<RoundRecord> = Vec::with_capacity(warmup.len());
        let mut warmup_shed = 0;
        let mut pending: Option<RoundRecord> = None;
        let mut quiet = 0;
        for k in 1..=total {
            let t = Millis(u64::from(k) * round_ms);
            self.run_before(t);
            let shed = std::mem::replace(&mut self.shed_acc, vec![0; self.nodes.len()]);
            match pending.take() {
                Some(mut rec) => {
                    rec.shed = shed;
                    let unchanged = records.last().is_some_and(|prev| prev.counts == rec.counts);
                    let still = !self.restless && rec.shed.iter().all(|&s| s == 0) && unchanged;
                    quiet = if still { quiet + 1 } else { 0 };
                    records.push(rec);
                    // A fixed point: every node decided "balanced" twice on
                    // the same counts, nothing moved, nothing is scripted.
                    // Every later round is the same, so write them down
                    // instead of computing them.
                    if quiet >= 2 && self.spec.fast_forward {
                        let counts = self.counts();
                        for round in (k - warmup_rounds)..=(total - warmup_rounds) {
                            records.push(RoundRecord {
                                round,
                                counts: counts.clone(),
                                shed: vec![0; counts.len()],
                            });
                        }
                        progress(total, total);
                        return Ok(self.report(
                            clients,
                            records,
                            warmup_records,
                            warmup_shed,
                            warmup_rounds,
                        ));
                    }
                }
                None => {
                    warmup_shed += shed.iter().sum::<u64>();
                    if let Some(rec) = warmup_records.last_mut() {
                        rec.shed = shed;
                    }
                }
            }
            let balancing = k > warmup_rounds;
            let steps = if balancing {
                if k == warmup_rounds + 1 {
                    first.clone()
                } else {
                    Vec::new()
                }
            } else {
                warmup[(k - 1) as usize].clone()
            };
            for step in steps {
                self.apply(step, t)?;
            }
            let record = RoundRecord {
                round: if balancing { k - warmup_rounds } else { k },
                counts: self.counts(),
                shed: Vec::new(),
            };
            if balancing {
                pending = Some(record);
            } else {
                warmup_records.push(record);
            }
            self.restless = false;
            self.run_instant(t);
            progress(k, total);
        }
        self.run_before(Millis(u64::from(total + 1) * round_ms));
        if let Some(mut rec) = pending.take() {
            rec.shed = std::mem::replace(&mut self.shed_acc, vec![0; self.nodes.len()]);
            records.push(rec);
        }
        Ok(self.report(clients, records, warmup_records, warmup_shed, warmup_rounds))
    }

    fn report(
        &self,
        clients: u64,
        records: Vec<RoundRecord>,
        warmup: Vec<RoundRecord>,
        warmup_shed: u64,
        warmup_rounds: u32,
    ) -> SimReport {
        let final_counts = self.counts();
        let start = records
            .first()
            .map(|r| r.counts.clone())
            .unwrap_or_default();
        let config = &self.spec.config;
        SimReport {
            strategy: config.strategy.as_str(),
            lb: self.spec.lb.as_str(),
            seed: self.spec.seed,
            nodes: self.nodes.len(),
            clients,
            converged_round: metrics::converged_round(&records, &final_counts, |c| {
                metrics::within_classic(c, config.allowed_average_deviation_percent)
            }),
            within_10_round: metrics::converged_round(&records, &final_counts, |c| {
                metrics::within_band(c, 10.0, 0)
            }),
            within_5_round: metrics::converged_round(&records, &final_counts, |c| {
                metrics::within_band(c, 5.0, config.abs_tolerance)
            }),
            total_shed: records.iter().flat_map(|r| &r.shed).sum(),
            ideal_shed: metrics::ideal_shed(&start),
            churn_ratio: None,
            peak_round_shed: records
                .iter()
                .map(|r| r.shed.iter().sum())
                .max()
                .unwrap_or(0),
            peak_node_shed_fraction: metrics::peak_node_shed_fraction(&records),
            refusals: self.refusals,
            forced_landings: self.forced,
            scenario: self.spec.scenario.name(),
            final_counts,
            warmup_rounds,
            warmup,
            warmup_shed,
            lost_clients: self.lost,
            rounds: records,
        }
        .with_churn()
    }

    fn counts(&self) -> Vec<u64> {
        self.nodes.iter().map(|n| n.count).collect()
    }

    fn start_node(&mut self, i: usize, now: Millis) -> Result<(), SimError> {
        let rng = ChaCha8Rng::seed_from_u64(self.rng.next_u64());
        let mut core = Balancer::new(self.nodes[i].id.clone(), self.spec.config.clone(), now, rng)?;
        // A node's address is its id: steering hints name nodes directly.
        core.set_address(Some(self.nodes[i].id.to_string()))?;
        if let Some(tbs) = &self.setup.tie_breakers {
            core.set_tie_breaker(TieBreaker::new(tbs[i]));
        }
        self.nodes[i].core = Some(core);
        Ok(())
    }

    fn apply(&mut self, step: Step, now: Millis) -> Result<(), SimError> {
        match step {
            Step::Down(i) => {
                // A graceful stop: it leaves the backend at once.
                self.nodes[i].core = None;
                self.reports.remove(&self.nodes[i].id);
                let n = std::mem::take(&mut self.nodes[i].count);
                self.reconnect(n, &[]);
            }
            Step::Up(i) => {
                self.nodes[i].count = 0;
                self.start_node(i, now)?;
            }
        }
        Ok(())
    }

    /// Processes every instant strictly before `t`.
    fn run_before(&mut self, t: Millis) {
        while let Some(next) = self.next_timeout().filter(|&n| n < t) {
            self.run_instant(next);
        }
    }

    fn next_timeout(&self) -> Option<Millis> {
        self.nodes
            .iter()
            .filter_map(|n| n.core.as_ref()?.poll_timeout())
            .min()
    }

    /// Everything due at `now`: timers first, then every node's reads and
    /// publishes, then the views, so all decisions of one instant see the
    /// same reports.
    fn run_instant(&mut self, now: Millis) {
        for _ in 0..MAX_STEPS_PER_INSTANT {
            let due: Vec<usize> = (0..self.nodes.len())
                .filter(|&i| {
                    self.nodes[i]
                        .core
                        .as_ref()
                        .and_then(|c| c.poll_timeout())
                        .is_some_and(|t| t <= now)
                })
                .collect();
            if due.is_empty() {
                return;
            }
            for &i in &due {
                if let Some(core) = self.nodes[i].core.as_mut() {
                    core.handle_timeout(now);
                }
            }
            self.drain(now);
        }
    }

    fn drain(&mut self, now: Millis) {
        loop {
            let mut views = Vec::new();
            let mut progressed = false;
            for i in 0..self.nodes.len() {
                while let Some(action) = self.nodes[i].core.as_mut().and_then(|c| c.poll_action()) {
                    progressed = true;
                    match action {
                        Action::ReadCount => {
                            let count = self.nodes[i].count;
                            if let Some(c) = self.nodes[i].core.as_mut() {
                                c.handle_count(now, Ok(count));
                            }
                        }
                        Action::Publish(report) => self.publish(report, now),
                        Action::FetchView => views.push(i),
                        Action::Shed { n, hints } => {
                            let shed = self.shed(i, n, &hints);
                            if let Some(c) = self.nodes[i].core.as_mut() {
                                c.handle_shed_done(now, Ok(shed));
                            }
                        }
                    }
                }
                self.drain_events(i);
            }
            if !views.is_empty() {
                // No publish happens between these fetches: one view serves all.
                progressed = true;
                let view = self.view(now);
                for i in views {
                    if let Some(c) = self.nodes[i].core.as_mut() {
                        c.handle_view(now, Ok(&view[..]));
                    }
                    // At once: holding every node's round event until the
                    // next pass costs more than the decision itself.
                    self.drain_events(i);
                }
            }
            if !progressed {
                return;
            }
        }
    }

    /// The simulator reads counts, not events; it only notes whether any
    /// round was anything but balanced (see the fixed point in `run`).
    fn drain_events(&mut self, i: usize) {
        if let Some(c) = self.nodes[i].core.as_mut() {
            while let Some(event) = c.poll_event() {
                if let Event::Round(r) = event {
                    self.restless |= r.outcome != RoundOutcome::Balanced;
                }
            }
        }
    }

    fn publish(&mut self, report: Report, now: Millis) {
        let value = wire::encode(&report);
        let changed_at = match self.reports.get(&report.node) {
            Some((old, at)) if *old == value => *at,
            _ => now,
        };
        self.reports.insert(report.node, (value, changed_at));
    }

    fn view(&self, now: Millis) -> Vec<MemberRecord> {
        self.reports
            .iter()
            .map(|(node, (value, at))| MemberRecord {
                node: node.clone(),
                incarnation: 0,
                value: value.clone(),
                age: now.saturating_since(*at),
            })
            .collect()
    }

    /// Node `i` closes `n` clients (at most what it has); they reconnect.
    fn shed(&mut self, i: usize, n: u64, hints: &[Hint]) -> u64 {
        let n = n.min(self.nodes[i].count);
        self.nodes[i].count -= n;
        self.shed_acc[i] += n;
        self.reconnect(n, hints);
        n
    }

    /// `n` clients reconnect. Those covered by a hint go straight to the
    /// hinted node if they honour hints (`hint_followers`) and it admits
    /// them; everyone else goes through the LB model. A client refused by
    /// admission control picks again, up to 5 picks, then stays on its last
    /// pick: no client is lost (unless the model is `none`).
    fn reconnect(&mut self, n: u64, hints: &[Hint]) {
        let live: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].core.is_some())
            .collect();
        let mut counts = self.counts();
        let mut steered = 0;
        for hint in hints {
            let Some(&j) = self.by_address.get(hint.address.as_str()) else {
                continue;
            };
            let k = hint.n.min(n - steered);
            steered += k;
            for _ in 0..k {
                if self.follows_hint() && self.admits(j, counts[j]) {
                    counts[j] += 1;
                } else {
                    self.place(&live, &mut counts);
                }
            }
        }
        for _ in steered..n {
            self.place(&live, &mut counts);
        }
        for (node, count) in self.nodes.iter_mut().zip(counts) {
            node.count = count;
        }
    }

    fn follows_hint(&mut self) -> bool {
        let p = self.spec.hint_followers;
        // No draw at the extremes, so runs without followers use the same
        // random stream as runs without hints at all.
        p >= 1.0 || (p > 0.0 && self.rng.random_bool(p))
    }

    /// The node named by node `j`'s next refusal hint, if it names one.
    fn refusal_hint(&mut self, j: usize) -> Option<usize> {
        let hints = self.nodes[j].core.as_ref()?.refusal_hints();
        let hint = hints.get(self.hint_cursor[j] % hints.len().max(1))?;
        let to = self.by_address.get(hint.as_str()).copied();
        self.hint_cursor[j] = self.hint_cursor[j].wrapping_add(1);
        to.filter(|&k| self.nodes[k].core.is_some())
    }

    fn admits(&self, j: usize, count: u64) -> bool {
        !self.spec.admission || self.nodes[j].core.as_ref().is_none_or(|c| c.admits(count))
    }

    /// One client through the LB model, with up to 5 picks. A client that
    /// honours hints and is refused tries the node the refusal names next,
    /// as the 503's hint says.
    fn place(&mut self, live: &[usize], counts: &mut [u64]) {
        let mut landed = None;
        let mut hinted: Option<usize> = None;
        for attempt in 1..=5 {
            let pick = match hinted.take() {
                Some(j) => Some(j),
                None => self.lb.pick(self.spec.lb, live, counts, &mut self.rng),
            };
            let Some(j) = pick else {
                break;
            };
            landed = Some(j);
            if self.admits(j, counts[j]) {
                break;
            }
            self.refusals += 1;
            if attempt == 5 {
                self.forced += 1;
            } else if self.follows_hint() {
                hinted = self.refusal_hint(j);
            }
        }
        match landed {
            Some(j) => counts[j] += 1,
            None => self.lost += 1,
        }
    }
}
