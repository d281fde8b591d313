//! Three balancers in one process on the in-memory backend: one node starts
//! with every session, and the cluster evens itself out.
//!
//! ```sh
//! cargo run -p clb --example memory_cluster
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clb::{
    Balancer, Config, Event, MemoryCluster, Resource, ResourceError, RoundOutcome, ShedRequest,
};

/// A node's sessions. A shed session "reconnects" through `lb` to a node.
struct Sessions {
    me: usize,
    nodes: Arc<Vec<AtomicU64>>,
    lb: AtomicU64,
}

impl Resource for Sessions {
    async fn count(&self) -> Result<u64, ResourceError> {
        Ok(self.nodes[self.me].load(Ordering::Relaxed))
    }

    async fn shed(&self, request: ShedRequest) -> Result<u64, ResourceError> {
        let mine = &self.nodes[self.me];
        let n = request.n.min(mine.load(Ordering::Relaxed));
        mine.fetch_sub(n, Ordering::Relaxed);
        // A round-robin load balancer in front of the cluster.
        for _ in 0..n {
            let to = self.lb.fetch_add(1, Ordering::Relaxed) as usize % self.nodes.len();
            self.nodes[to].fetch_add(1, Ordering::Relaxed);
        }
        Ok(n)
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let nodes = Arc::new(vec![
        AtomicU64::new(3_000),
        AtomicU64::new(0),
        AtomicU64::new(0),
    ]);
    let cluster = Arc::new(MemoryCluster::new());
    // Short rounds so the example finishes in a few seconds; try
    // `..Config::classic()` to see the original stop at +25%.
    let config = Config {
        round_duration: Duration::from_millis(200),
        ..Config::default()
    };
    let mut balancers = Vec::new();
    for me in 0..nodes.len() {
        let sessions = Arc::new(Sessions {
            me,
            nodes: Arc::clone(&nodes),
            lb: AtomicU64::new(me as u64),
        });
        balancers.push(
            Balancer::builder("sessions")
                .node_id(format!("node-{me}"))
                .config(config.clone())
                .spawn(sessions, Arc::clone(&cluster))?,
        );
    }

    let mut events = balancers[0].subscribe();
    let mut balanced_in_a_row = 0;
    while balanced_in_a_row < 3 {
        let Event::Round(round) = events.recv().await? else {
            continue;
        };
        let counts: Vec<u64> = nodes.iter().map(|n| n.load(Ordering::Relaxed)).collect();
        println!(
            "round {:>3}: counts {counts:?} ({})",
            round.round,
            round.outcome.label()
        );
        balanced_in_a_row = match round.outcome {
            RoundOutcome::Balanced => balanced_in_a_row + 1,
            _ => 0,
        };
    }
    for b in balancers {
        b.shutdown().await;
    }
    Ok(())
}
