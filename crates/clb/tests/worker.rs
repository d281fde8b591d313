#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The async balancer on the in-memory backend, with paused tokio time: real
//! workers, real tasks, virtual clock. No test sleeps on a wall clock.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clb::{
    Balancer, ClusterBackend, Config, DiscardReason, Event, MemoryCluster, Resource, ResourceError,
    RoundOutcome, ShedRequest,
};
use tokio::sync::broadcast;
use tokio::time::{Instant, sleep};

const ROUND: Duration = Duration::from_secs(1);

/// Counts per node plus a seeded "external load balancer": a shed client
/// reconnects to a uniformly random node (possibly the same one).
struct World {
    counts: Mutex<Vec<u64>>,
    rng: Mutex<u64>,
}

impl World {
    fn new(counts: Vec<u64>) -> Arc<Self> {
        Arc::new(World {
            counts: Mutex::new(counts),
            rng: Mutex::new(0x5EED),
        })
    }

    fn counts(&self) -> Vec<u64> {
        self.counts.lock().unwrap().clone()
    }

    fn next(&self, n: usize) -> usize {
        let mut s = self.rng.lock().unwrap();
        *s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (*s >> 33) as usize % n
    }
}

struct Node {
    world: Arc<World>,
    index: usize,
}

impl Resource for Node {
    async fn count(&self) -> Result<u64, ResourceError> {
        Ok(self.world.counts()[self.index])
    }

    async fn shed(&self, request: ShedRequest) -> Result<u64, ResourceError> {
        let len = self.world.counts().len();
        let mut counts = self.world.counts.lock().unwrap();
        let n = request.n.min(counts[self.index]);
        counts[self.index] -= n;
        drop(counts);
        for _ in 0..n {
            let to = self.world.next(len);
            self.world.counts.lock().unwrap()[to] += 1;
        }
        Ok(n)
    }
}

fn classic() -> Config {
    Config {
        round_duration: ROUND,
        ..Config::classic()
    }
}

fn start(world: &Arc<World>, cluster: &Arc<MemoryCluster>, config: &Config) -> Vec<Balancer> {
    (0..world.counts().len())
        .map(|i| {
            Balancer::builder("ws")
                .node_id(format!("n{i}"))
                .config(config.clone())
                .seed(i as u64)
                .spawn(
                    Arc::new(Node {
                        world: Arc::clone(world),
                        index: i,
                    }),
                    Arc::clone(cluster),
                )
                .unwrap()
        })
        .collect()
}

/// Waits for the first round event matching `pred`, within `rounds` rounds
/// of virtual time.
async fn wait_round(
    rx: &mut broadcast::Receiver<Event>,
    rounds: u32,
    mut pred: impl FnMut(&clb::RoundEvent) -> bool,
) -> clb::RoundEvent {
    let deadline = Instant::now() + ROUND * rounds;
    loop {
        let event = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("no matching round before the deadline")
            .expect("event stream closed");
        if let Event::Round(r) = event {
            if pred(&r) {
                return r;
            }
        }
    }
}

fn within_25_percent(counts: &[u64]) -> bool {
    let avg = counts.iter().sum::<u64>() as f64 / counts.len() as f64;
    counts.iter().all(|&c| c as f64 <= avg * 1.25)
}

#[tokio::test(start_paused = true)]
async fn five_nodes_from_500_0_0_0_0_shed_round_after_round_until_within_25_percent() {
    let world = World::new(vec![500, 0, 0, 0, 0]);
    let cluster = Arc::new(MemoryCluster::new());
    let balancers = start(&world, &cluster, &classic());
    let mut rxs: Vec<_> = balancers.iter().map(|b| b.subscribe()).collect();

    let mut shed_rounds = 0;
    let deadline = Instant::now() + ROUND * 60;
    while !within_25_percent(&world.counts()) {
        assert!(
            Instant::now() < deadline,
            "not balanced after 60 rounds: {:?}",
            world.counts()
        );
        sleep(ROUND).await;
        for rx in &mut rxs {
            while let Ok(e) = rx.try_recv() {
                if let Event::Round(r) = e {
                    if let RoundOutcome::Shed { n } = r.outcome {
                        assert!(n <= 100, "classic never sheds more than max_shed_count");
                        shed_rounds += 1;
                    }
                }
            }
        }
    }
    assert!(
        shed_rounds >= 2,
        "expected several shedding rounds, saw {shed_rounds}"
    );
    assert_eq!(world.counts().iter().sum::<u64>(), 500, "no client lost");

    // Balanced now: the next rounds must not shed anything.
    let before = world.counts();
    let mut rx = balancers[0].subscribe();
    for _ in 0..3 {
        let r = wait_round(&mut rx, 2, |_| true).await;
        assert_eq!(r.outcome, RoundOutcome::Balanced, "{r:?}");
        assert_eq!(r.members.len(), 5);
    }
    assert_eq!(world.counts(), before);
    let status = balancers[0].status();
    assert_eq!(status.members.len(), 5);
    assert!(status.rounds.balanced >= 3);
}

#[tokio::test(start_paused = true)]
async fn a_member_that_vanishes_discards_rounds_until_failure_detection_drops_it() {
    let world = World::new(vec![10, 10, 10]);
    let cluster = Arc::new(MemoryCluster::with_failure_timeout(Duration::from_secs(3)));
    let balancers = start(&world, &cluster, &classic());
    let mut rx = balancers[0].subscribe();
    wait_round(&mut rx, 3, |r| {
        r.outcome == RoundOutcome::Balanced && r.members.len() == 3
    })
    .await;

    cluster.isolate(&"n2".into());
    let discarded = wait_round(&mut rx, 3, |r| {
        matches!(r.outcome, RoundOutcome::Discarded { .. })
    })
    .await;
    assert!(
        matches!(
            &discarded.outcome,
            RoundOutcome::Discarded { reason: DiscardReason::StaleReport { node, .. } } if node.as_str() == "n2"
        ),
        "{discarded:?}"
    );
    // Once failure detection drops n2, rounds are complete again among two.
    let resumed = wait_round(&mut rx, 6, |r| {
        !matches!(r.outcome, RoundOutcome::Discarded { .. })
    })
    .await;
    assert_eq!(resumed.members.len(), 2, "{resumed:?}");
    assert!(balancers[0].status().rounds.discarded >= 1);
}

#[tokio::test(start_paused = true)]
async fn graceful_shutdown_leaves_the_namespace_at_once() {
    let world = World::new(vec![10, 10, 10]);
    let cluster = Arc::new(MemoryCluster::new());
    let mut balancers = start(&world, &cluster, &classic());
    let mut rx = balancers[0].subscribe();
    wait_round(&mut rx, 3, |r| r.members.len() == 3).await;
    balancers.pop().unwrap().shutdown().await;
    // No discarded round: the leave is seen before the next tick.
    let r = wait_round(&mut rx, 2, |_| true).await;
    assert_eq!(r.outcome, RoundOutcome::Balanced);
    assert_eq!(r.members.len(), 2);
}

/// Panics in `count()` while `panicking` is set.
struct Flaky {
    panicking: AtomicBool,
    hang_shed: bool,
    count: u64,
}

impl Resource for Flaky {
    async fn count(&self) -> Result<u64, ResourceError> {
        if self.panicking.load(Ordering::SeqCst) {
            panic!("count() blew up (deliberately, in a test)");
        }
        Ok(self.count)
    }

    async fn shed(&self, request: ShedRequest) -> Result<u64, ResourceError> {
        if self.hang_shed {
            std::future::pending::<()>().await;
        }
        Ok(request.n)
    }
}

#[tokio::test(start_paused = true)]
async fn a_panicking_count_skips_the_round_and_the_balancer_survives() {
    let cluster = Arc::new(MemoryCluster::new());
    let flaky = Arc::new(Flaky {
        panicking: AtomicBool::new(false),
        hang_shed: false,
        count: 0,
    });
    let b = Balancer::builder("ws")
        .node_id("solo")
        .config(classic())
        .spawn(Arc::clone(&flaky), cluster)
        .unwrap();
    let mut rx = b.subscribe();
    wait_round(&mut rx, 2, |r| r.outcome == RoundOutcome::Balanced).await;
    flaky.panicking.store(true, Ordering::SeqCst);
    let r = wait_round(&mut rx, 2, |_| true).await;
    assert_eq!(
        r.outcome,
        RoundOutcome::Discarded {
            reason: DiscardReason::CountFailed
        }
    );
    flaky.panicking.store(false, Ordering::SeqCst);
    wait_round(&mut rx, 3, |r| r.outcome == RoundOutcome::Balanced).await;
}

#[tokio::test(start_paused = true)]
async fn a_hanging_shed_times_out_and_the_next_rounds_still_run() {
    let cluster = Arc::new(MemoryCluster::new());
    let hanging = Arc::new(Flaky {
        panicking: AtomicBool::new(false),
        hang_shed: true,
        count: 100,
    });
    let empty = Arc::new(Flaky {
        panicking: AtomicBool::new(false),
        hang_shed: false,
        count: 0,
    });
    let b = Balancer::builder("ws")
        .node_id("full")
        .config(classic())
        .spawn(hanging, Arc::clone(&cluster))
        .unwrap();
    let _other = Balancer::builder("ws")
        .node_id("empty")
        .config(classic())
        .spawn(empty, cluster)
        .unwrap();
    let mut rx = b.subscribe();
    let shed = wait_round(&mut rx, 3, |r| {
        matches!(r.outcome, RoundOutcome::Shed { .. })
    })
    .await;
    let deadline = Instant::now() + ROUND;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap()
            .unwrap()
        {
            Event::ShedFailed { requested, .. } => {
                assert_eq!(requested, 25);
                break;
            }
            Event::ShedDone { .. } => panic!("a hanging shed cannot succeed"),
            _ => {}
        }
    }
    let next = wait_round(&mut rx, 2, |_| true).await;
    assert!(next.round > shed.round);
    assert_eq!(
        b.status().shed_total,
        0,
        "nothing reported shed, nothing counted"
    );
}

#[tokio::test]
async fn invalid_config_or_namespace_is_refused_before_anything_runs() {
    let cluster = Arc::new(MemoryCluster::new());
    let resource = Arc::new(Flaky {
        panicking: AtomicBool::new(false),
        hang_shed: false,
        count: 0,
    });
    let bad = Config {
        shed_percentage: 150.0,
        ..Config::classic()
    };
    let err = Balancer::builder("ws")
        .node_id("n")
        .config(bad)
        .spawn(Arc::clone(&resource), Arc::clone(&cluster))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "shed_percentage must be in [0, 100], got 150"
    );
    let err = Balancer::builder("")
        .node_id("n")
        .spawn(Arc::clone(&resource), Arc::clone(&cluster))
        .unwrap_err();
    assert!(
        err.to_string().starts_with("namespace \"\" is invalid"),
        "{err}"
    );
    let err = Balancer::builder("ws")
        .node_id("n")
        .config(classic())
        .shed_timeout(Duration::from_secs(5))
        .spawn(resource, cluster)
        .unwrap_err();
    assert!(
        err.to_string().starts_with("shed_timeout must be in"),
        "{err}"
    );
}

/// A node whose count only drops by what it sheds; records every shed call.
struct Recorder {
    start: u64,
    calls: Mutex<Vec<(Instant, ShedRequest)>>,
}

impl Recorder {
    fn new(start: u64) -> Arc<Self> {
        Arc::new(Recorder {
            start,
            calls: Mutex::new(Vec::new()),
        })
    }

    fn shed_so_far(&self) -> u64 {
        self.calls.lock().unwrap().iter().map(|(_, r)| r.n).sum()
    }
}

impl Resource for Recorder {
    async fn count(&self) -> Result<u64, ResourceError> {
        Ok(self.start - self.shed_so_far())
    }

    async fn shed(&self, request: ShedRequest) -> Result<u64, ResourceError> {
        let n = request.n;
        self.calls.lock().unwrap().push((Instant::now(), request));
        Ok(n)
    }
}

fn proportional() -> Config {
    Config {
        round_duration: ROUND,
        ..Config::proportional()
    }
}

/// Starts a full node and an empty one, each advertising an address.
fn full_and_empty(cluster: &Arc<MemoryCluster>) -> (Arc<Recorder>, Balancer, Balancer) {
    let full = Recorder::new(1000);
    let a = Balancer::builder("ws")
        .node_id("a")
        .config(proportional())
        .address("a:1")
        .seed(1)
        .spawn(Arc::clone(&full), Arc::clone(cluster))
        .unwrap();
    let b = Balancer::builder("ws")
        .node_id("b")
        .config(proportional())
        .address("b:1")
        .seed(2)
        .spawn(Recorder::new(0), Arc::clone(cluster))
        .unwrap();
    (full, a, b)
}

#[tokio::test(start_paused = true)]
async fn a_decided_shed_is_paced_in_jittered_batches_over_half_a_round() {
    let cluster = Arc::new(MemoryCluster::new());
    let (full, a, _b) = full_and_empty(&cluster);
    let mut rx = a.subscribe();
    let round = wait_round(&mut rx, 5, |r| {
        matches!(r.outcome, RoundOutcome::Shed { .. })
    })
    .await;
    let decided_at = Instant::now();
    let RoundOutcome::Shed { n } = round.outcome else {
        unreachable!()
    };
    assert_eq!(n, 100, "10% of 1000: the hard cap");
    sleep(ROUND / 2).await;
    let calls = full.calls.lock().unwrap().clone();
    let times: Vec<Duration> = calls.iter().map(|(t, _)| *t - decided_at).collect();
    assert_eq!(
        calls.iter().map(|(_, r)| r.n).sum::<u64>(),
        100,
        "{calls:?}"
    );
    assert_eq!(calls.len(), 10, "split into pacing_max_batches batches");
    assert!(
        times.iter().all(|t| *t < ROUND / 2),
        "all within the window: {times:?}"
    );
    let spread = *times.last().unwrap() - times[0];
    assert!(
        spread >= ROUND / 4,
        "spread over the window, not a burst: {times:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn admission_refuses_above_target_and_sheds_carry_steering_hints() {
    let cluster = Arc::new(MemoryCluster::new());
    let (full, a, b) = full_and_empty(&cluster);
    let mut rx = a.subscribe();
    let round = wait_round(&mut rx, 5, |r| {
        matches!(r.outcome, RoundOutcome::Shed { .. })
    })
    .await;
    assert!(round.rebalancing);
    assert!(!a.accepting(), "above target in a rebalance: refuse");
    assert!(!a.admission().admits(600));
    assert!(a.admission().admits(400));
    assert_eq!(a.admission().hint().as_deref(), Some("b:1"));
    assert!(b.accepting(), "below target: accept");
    sleep(ROUND / 2).await;
    let calls = full.calls.lock().unwrap().clone();
    assert!(!calls.is_empty());
    for (_, request) in &calls {
        let hinted: Vec<Option<&str>> = request.iter_hints().collect();
        assert_eq!(hinted.len() as u64, request.n);
        assert!(hinted.iter().all(|h| *h == Some("b:1")), "{request:?}");
    }
    assert!(a.status().rebalancing);
}

/// A backend that never answers.
struct Hung;

impl ClusterBackend for Hung {
    async fn publish(&self, _: &str, _: &clb::NodeId, _: &str) -> Result<(), clb::BackendError> {
        std::future::pending().await
    }

    async fn view(&self, _: &str) -> Result<Vec<clb::MemberRecord>, clb::BackendError> {
        std::future::pending().await
    }

    async fn leave(&self, _: &str, _: &clb::NodeId) -> Result<(), clb::BackendError> {
        std::future::pending().await
    }
}

/// Counts `count()` calls.
struct Counting(AtomicU64);

impl Resource for Counting {
    async fn count(&self) -> Result<u64, ResourceError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(5)
    }

    async fn shed(&self, request: ShedRequest) -> Result<u64, ResourceError> {
        Ok(request.n)
    }
}

#[tokio::test(start_paused = true)]
async fn a_hung_backend_discards_rounds_and_delays_neither_counts_nor_shutdown() {
    let counting = Arc::new(Counting(AtomicU64::new(0)));
    let backend = Arc::new(Hung);
    let b = Balancer::builder("ws")
        .node_id("n")
        .config(classic())
        .spawn(Arc::clone(&counting), backend)
        .unwrap();
    let mut rx = b.subscribe();
    let r = wait_round(&mut rx, 3, |_| true).await;
    assert_eq!(
        r.outcome,
        RoundOutcome::Discarded {
            reason: DiscardReason::BackendFailed
        }
    );
    wait_round(&mut rx, 2, |_| true).await;
    // Counts kept coming (four a round), although every publish hangs.
    assert!(
        counting.0.load(Ordering::SeqCst) >= 8,
        "counts were delayed"
    );
    assert!(b.status().rounds.discarded >= 2);
    // Shutdown waits at most the backend timeout (a quarter round) for the
    // hung leave, whatever else is hung.
    let started = Instant::now();
    b.shutdown().await;
    assert!(started.elapsed() <= ROUND / 4 + Duration::from_millis(10));
}

fn shared_report(node: &str, count: u64, seq: u64) -> clb::Report {
    clb::Report {
        node: node.into(),
        count,
        tie_breaker: clb::core::TieBreaker::new(0.1),
        weight: 1.0,
        address: None,
        seq,
        rebalancing: false,
    }
}

#[tokio::test(start_paused = true)]
async fn a_mixed_version_cluster_drops_no_member_and_decides_on_all() {
    // "old" runs the previous release: it writes the v1 layout.
    let cluster = Arc::new(MemoryCluster::new());
    let me = Arc::new(Flaky {
        panicking: AtomicBool::new(false),
        hang_shed: false,
        count: 100,
    });
    let b = Balancer::builder("ws")
        .node_id("new")
        .config(classic())
        .spawn(me, Arc::clone(&cluster))
        .unwrap();
    let mut rx = b.subscribe();
    let writer = tokio::spawn({
        let cluster = Arc::clone(&cluster);
        async move {
            for seq in 1.. {
                let value = clb::core::wire::encode_v1(&shared_report("old", 0, seq));
                cluster.inject("ws", &"old".into(), &value);
                sleep(ROUND / 4).await;
            }
        }
    });
    // Both members count: classic sheds 25 from 100 against 0.
    let r = wait_round(&mut rx, 4, |r| r.members.len() == 2).await;
    assert_eq!(r.outcome, RoundOutcome::Shed { n: 25 }, "{r:?}");
    assert_eq!(
        b.status().rounds.discarded,
        0,
        "no round lost to the upgrade"
    );
    writer.abort();
}

#[tokio::test(start_paused = true)]
async fn a_report_that_cannot_be_read_discards_the_round_and_nothing_is_shed() {
    let cluster = Arc::new(MemoryCluster::new());
    let recorder = Recorder::new(100);
    let b = Balancer::builder("ws")
        .node_id("a")
        .config(classic())
        .spawn(Arc::clone(&recorder), Arc::clone(&cluster))
        .unwrap();
    let mut rx = b.subscribe();
    let writer = tokio::spawn({
        let cluster = Arc::clone(&cluster);
        async move {
            for seq in 1u64.. {
                // A node of a future, incompatible version (or a broken one).
                cluster.inject("ws", &"b".into(), &format!("v7;{seq};count=0"));
                sleep(ROUND / 4).await;
            }
        }
    });
    for _ in 0..3 {
        let r = wait_round(&mut rx, 2, |_| true).await;
        assert!(
            matches!(
                &r.outcome,
                RoundOutcome::Discarded {
                    reason: DiscardReason::InvalidReport { node, .. }
                } if node.as_str() == "b"
            ),
            "{r:?}"
        );
        assert_eq!(r.members.len(), 2, "the unreadable member is not left out");
    }
    assert_eq!(recorder.shed_so_far(), 0);
    writer.abort();
}

#[tokio::test(start_paused = true)]
async fn draining_and_readiness_are_one_answer_for_every_caller() {
    let cluster = Arc::new(MemoryCluster::new());
    let b = Balancer::builder("ws")
        .node_id("a")
        .config(classic())
        .spawn(Recorder::new(3), Arc::clone(&cluster))
        .unwrap();
    let mut rx = b.subscribe();
    wait_round(&mut rx, 2, |_| true).await;
    let admission = b.admission();
    assert_eq!(admission.check(3), Ok(()));
    assert!(b.status().accepting && b.status().refusal.is_none());
    assert_eq!(b.admission().hint(), None);
    admission.start_draining();
    assert_eq!(admission.check(0), Err(clb::Refusal::Draining));
    let status = b.status();
    assert!(
        !status.accepting,
        "status agrees at once, not a round later"
    );
    assert_eq!(status.refusal, Some("draining"));
    assert!(!b.accepting());
}
