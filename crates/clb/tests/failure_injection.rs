#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Failure injection in the worker: a resource whose `count()` errors,
//! panics or hangs, whose `shed()` errors, panics, claims more than it was
//! asked or closes fewer; a backend that errors or hands over another
//! namespace's view; the clock jumping forward. Each is survived (rounds go
//! on, balancing resumes when the fault ends), counted, and never makes a
//! node shed more than it decided. Virtual time, the in-memory backend.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clb::{
    BackendError, Balancer, ClusterBackend, Config, DiscardReason, Event, MemberRecord,
    MemoryCluster, NodeId, Resource, ResourceError, RoundEvent, RoundOutcome, ShedRequest,
};
use tokio::sync::broadcast;
use tokio::time::Instant;

const ROUND: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug, PartialEq)]
enum CountFault {
    None,
    Error,
    Panic,
    Hang,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum ShedFault {
    None,
    Error,
    Panic,
    /// Closes what it was asked, says it closed three times as many.
    OverReport,
    /// Closes half of what it was asked, and says so.
    CloseHalf,
}

/// A node's resources, with faults switched on and off by the test.
struct Faulty {
    held: AtomicU64,
    count_fault: Mutex<CountFault>,
    shed_fault: Mutex<ShedFault>,
    /// Every `shed()` call's `n`.
    asked: Mutex<Vec<u64>>,
}

impl Faulty {
    fn new(held: u64) -> Arc<Self> {
        Arc::new(Faulty {
            held: AtomicU64::new(held),
            count_fault: Mutex::new(CountFault::None),
            shed_fault: Mutex::new(ShedFault::None),
            asked: Mutex::new(Vec::new()),
        })
    }

    fn asked_total(&self) -> u64 {
        self.asked.lock().unwrap().iter().sum()
    }

    fn close(&self, n: u64) {
        self.held.fetch_sub(n, Ordering::SeqCst);
    }
}

impl Resource for Faulty {
    async fn count(&self) -> Result<u64, ResourceError> {
        let fault = *self.count_fault.lock().unwrap();
        match fault {
            CountFault::None => Ok(self.held.load(Ordering::SeqCst)),
            CountFault::Error => Err(ResourceError::Unavailable(
                "the registry is locked (injected)".into(),
            )),
            CountFault::Panic => panic!("count() blew up (injected)"),
            CountFault::Hang => std::future::pending().await,
        }
    }

    async fn shed(&self, request: ShedRequest) -> Result<u64, ResourceError> {
        let n = request.n;
        self.asked.lock().unwrap().push(n);
        let fault = *self.shed_fault.lock().unwrap();
        match fault {
            ShedFault::None => {
                self.close(n);
                Ok(n)
            }
            ShedFault::Error => Err(ResourceError::Unavailable("cannot close (injected)".into())),
            ShedFault::Panic => panic!("shed() blew up (injected)"),
            ShedFault::OverReport => {
                self.close(n);
                Ok(n * 3 + 5)
            }
            ShedFault::CloseHalf => {
                self.close(n / 2);
                Ok(n / 2)
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum BackendFault {
    None,
    Error,
    /// Answers every view with the members of namespace `other`.
    OtherNamespace,
}

/// The in-memory backend with faults.
struct FaultyBackend {
    inner: Arc<MemoryCluster>,
    fault: Mutex<BackendFault>,
}

impl ClusterBackend for FaultyBackend {
    async fn publish(&self, ns: &str, node: &NodeId, value: &str) -> Result<(), BackendError> {
        self.inner.publish(ns, node, value).await
    }

    async fn view(&self, ns: &str) -> Result<Vec<MemberRecord>, BackendError> {
        let fault = *self.fault.lock().unwrap();
        match fault {
            BackendFault::None => self.inner.view(ns).await,
            BackendFault::Error => Err(BackendError::Unreachable("injected".into())),
            BackendFault::OtherNamespace => self.inner.view("other").await,
        }
    }

    async fn leave(&self, ns: &str, node: &NodeId) -> Result<(), BackendError> {
        self.inner.leave(ns, node).await
    }
}

/// Node `a` (faulty, 1000) and `b` (empty), and a node `c` balancing
/// namespace `other` so that a mixed-up view has something in it.
struct Cluster {
    resource: Arc<Faulty>,
    backend: Arc<FaultyBackend>,
    a: Balancer,
    _b: Balancer,
    _c: Balancer,
    events: broadcast::Receiver<Event>,
    /// Sum of every decided shed of `a`.
    decided: u64,
    rounds: Vec<RoundEvent>,
    shed_failed: u64,
    shed_done: Vec<(u64, u64)>,
}

fn config() -> Config {
    Config {
        round_duration: ROUND,
        settle_rounds: 0,
        ..Config::proportional()
    }
}

fn start() -> Cluster {
    let memory = Arc::new(MemoryCluster::new());
    let backend = Arc::new(FaultyBackend {
        inner: Arc::clone(&memory),
        fault: Mutex::new(BackendFault::None),
    });
    let resource = Faulty::new(1000);
    let a = Balancer::builder("ws")
        .node_id("a")
        .config(config())
        .count_timeout(ROUND / 4)
        .shed_timeout(ROUND / 4)
        .seed(1)
        .spawn(Arc::clone(&resource), Arc::clone(&backend))
        .unwrap();
    let b = Balancer::builder("ws")
        .node_id("b")
        .config(config())
        .seed(2)
        .spawn(Faulty::new(0), Arc::clone(&memory))
        .unwrap();
    let c = Balancer::builder("other")
        .node_id("c")
        .config(config())
        .seed(3)
        .spawn(Faulty::new(0), Arc::clone(&memory))
        .unwrap();
    let events = a.subscribe();
    Cluster {
        resource,
        backend,
        a,
        _b: b,
        _c: c,
        events,
        decided: 0,
        rounds: Vec::new(),
        shed_failed: 0,
        shed_done: Vec::new(),
    }
}

impl Cluster {
    /// Runs `rounds` rounds of `a` (virtual time), recording every event;
    /// returns those rounds.
    async fn rounds(&mut self, rounds: usize) -> Vec<RoundEvent> {
        let deadline = Instant::now() + ROUND * (rounds as u32 + 2);
        let mut seen = Vec::new();
        while seen.len() < rounds {
            let event = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .expect("the balancer stopped deciding rounds")
                .expect("event stream closed");
            match event {
                Event::Round(r) => {
                    if let RoundOutcome::Shed { n } = r.outcome {
                        let count = r.count.unwrap();
                        assert!(n <= count / 10, "over the hard cap: {n} of {count}");
                        self.decided += n;
                    }
                    self.rounds.push(r.clone());
                    seen.push(r);
                }
                Event::ShedFailed { .. } => self.shed_failed += 1,
                Event::ShedDone { requested, shed } => self.shed_done.push((requested, shed)),
                _ => {}
            }
        }
        seen
    }

    /// The property every test ends on: `a` was never asked to shed more
    /// than it decided, and what it is said to have shed is no more than
    /// what it was asked.
    fn check(&self) {
        assert!(
            self.resource.asked_total() <= self.decided,
            "asked {} > decided {}",
            self.resource.asked_total(),
            self.decided
        );
        assert!(self.a.status().shed_total <= self.resource.asked_total());
    }

    async fn resumes(&mut self) {
        *self.resource.count_fault.lock().unwrap() = CountFault::None;
        *self.resource.shed_fault.lock().unwrap() = ShedFault::None;
        *self.backend.fault.lock().unwrap() = BackendFault::None;
        let before = self.resource.asked_total();
        let rounds = self.rounds(4).await;
        assert!(
            rounds
                .iter()
                .any(|r| matches!(r.outcome, RoundOutcome::Shed { .. })),
            "balancing did not resume: {rounds:?}"
        );
        // The last decided amount is paced over half a round.
        tokio::time::sleep(ROUND).await;
        assert!(self.resource.asked_total() > before);
        self.check();
    }
}

fn discarded(rounds: &[RoundEvent], reason: &str) -> bool {
    rounds.iter().all(|r| match &r.outcome {
        RoundOutcome::Discarded { reason: got } => got.label() == reason,
        _ => false,
    })
}

async fn count_fault(fault: CountFault) {
    let mut c = start();
    c.rounds(2).await;
    *c.resource.count_fault.lock().unwrap() = fault;
    // The round in flight may have read its count already.
    c.rounds(1).await;
    let faulty = c.rounds(4).await;
    assert!(
        discarded(&faulty, "count_failed"),
        "{fault:?}: {:?}",
        faulty.iter().map(|r| &r.outcome).collect::<Vec<_>>()
    );
    let asked = c.resource.asked_total();
    tokio::time::sleep(ROUND).await;
    assert!(
        c.resource.asked_total() <= asked + c.decided,
        "{fault:?}: shed while counts failed"
    );
    assert!(c.a.status().rounds.discarded >= 4);
    c.resumes().await;
}

#[tokio::test(start_paused = true)]
async fn a_count_that_errors_skips_rounds_and_balancing_resumes() {
    count_fault(CountFault::Error).await;
}

#[tokio::test(start_paused = true)]
async fn a_count_that_panics_skips_rounds_and_balancing_resumes() {
    count_fault(CountFault::Panic).await;
}

#[tokio::test(start_paused = true)]
async fn a_count_that_hangs_times_out_skips_rounds_and_balancing_resumes() {
    count_fault(CountFault::Hang).await;
}

async fn shed_fault(fault: ShedFault) -> Cluster {
    let mut c = start();
    *c.resource.shed_fault.lock().unwrap() = fault;
    c.rounds(5).await;
    tokio::time::sleep(ROUND).await;
    c.check();
    c
}

#[tokio::test(start_paused = true)]
async fn a_shed_that_errors_cancels_the_rest_of_the_round_and_counts_nothing() {
    let mut c = shed_fault(ShedFault::Error).await;
    assert!(c.shed_failed >= 1);
    assert_eq!(c.a.status().shed_total, 0, "nothing was closed");
    assert_eq!(
        c.resource.held.load(Ordering::SeqCst),
        1000,
        "every resource kept"
    );
    c.resumes().await;
}

#[tokio::test(start_paused = true)]
async fn a_shed_that_panics_is_survived_and_counts_nothing() {
    let mut c = shed_fault(ShedFault::Panic).await;
    assert!(c.shed_failed >= 1);
    assert_eq!(c.a.status().shed_total, 0);
    c.resumes().await;
}

#[tokio::test(start_paused = true)]
async fn a_shed_that_claims_more_than_asked_is_believed_only_up_to_what_was_asked() {
    let mut c = shed_fault(ShedFault::OverReport).await;
    assert!(!c.shed_done.is_empty());
    for &(requested, shed) in &c.shed_done {
        assert_eq!(shed, requested, "claimed 3n + 5, counted as n");
    }
    assert_eq!(c.a.status().shed_total, c.resource.asked_total());
    c.resumes().await;
}

#[tokio::test(start_paused = true)]
async fn a_shed_that_closes_fewer_is_counted_as_what_it_closed() {
    let mut c = shed_fault(ShedFault::CloseHalf).await;
    assert!(!c.shed_done.is_empty());
    for &(requested, shed) in &c.shed_done {
        assert_eq!(shed, requested / 2);
    }
    let closed = 1000 - c.resource.held.load(Ordering::SeqCst);
    assert!(closed < c.resource.asked_total());
    assert_eq!(c.a.status().shed_total, closed, "counted what was closed");
    // The next rounds see the real count and decide on it.
    let r = c.rounds(1).await;
    assert_eq!(r[0].count, Some(c.resource.held.load(Ordering::SeqCst)));
    c.resumes().await;
}

#[tokio::test(start_paused = true)]
async fn a_backend_that_errors_discards_rounds_and_nothing_is_shed() {
    let mut c = start();
    c.rounds(1).await;
    *c.backend.fault.lock().unwrap() = BackendFault::Error;
    c.rounds(1).await;
    tokio::time::sleep(ROUND).await;
    let asked = c.resource.asked_total();
    let faulty = c.rounds(4).await;
    assert!(discarded(&faulty, "backend_failed"), "{faulty:?}");
    tokio::time::sleep(ROUND).await;
    assert_eq!(
        c.resource.asked_total(),
        asked,
        "shed during backend failure"
    );
    c.resumes().await;
}

#[tokio::test(start_paused = true)]
async fn a_backend_that_hands_over_another_namespace_is_caught_and_nothing_is_shed() {
    let mut c = start();
    c.rounds(1).await;
    *c.backend.fault.lock().unwrap() = BackendFault::OtherNamespace;
    c.rounds(1).await;
    tokio::time::sleep(ROUND).await;
    let asked = c.resource.asked_total();
    let faulty = c.rounds(4).await;
    for r in &faulty {
        assert_eq!(
            r.outcome,
            RoundOutcome::Discarded {
                reason: DiscardReason::InvalidReport {
                    node: "c".into(),
                    error: Some(clb::core::wire::ReportError::WrongNamespace),
                }
            }
        );
    }
    tokio::time::sleep(ROUND).await;
    assert_eq!(c.resource.asked_total(), asked);
    c.resumes().await;
}

#[tokio::test(start_paused = true)]
async fn the_clock_jumping_an_hour_forward_mid_rebalance_is_survived() {
    let mut c = start();
    let rounds = c.rounds(3).await;
    assert!(
        rounds
            .iter()
            .any(|r| matches!(r.outcome, RoundOutcome::Shed { .. }))
    );
    let before = c.rounds.len();
    tokio::time::advance(Duration::from_secs(3600)).await;
    let after = c.rounds(5).await;
    assert!(c.rounds.len() >= before + 5);
    // No burst of rounds and no shed beyond the cap for the lost hour.
    let decided: u64 = after
        .iter()
        .map(|r| match r.outcome {
            RoundOutcome::Shed { n } => n,
            _ => 0,
        })
        .sum();
    assert!(decided <= 5 * 100, "{decided}");
    tokio::time::sleep(ROUND).await;
    c.check();
    c.resumes().await;
}
