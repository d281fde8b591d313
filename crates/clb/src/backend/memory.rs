//! The in-process backend: several balancers in one process share one
//! [`MemoryCluster`]. The reference implementation of [`ClusterBackend`], used
//! by tests and examples.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use clb_core::{MemberRecord, NodeId};
use tokio::time::Instant;

use super::{BackendError, ClusterBackend};

/// Default time after a member's last publish before it is considered dead.
pub const DEFAULT_FAILURE_TIMEOUT: Duration = Duration::from_secs(5);

/// An in-memory cluster. Clones share the same state; give each balancer a
/// clone.
///
/// Failure detection is by silence: a member that has not published for
/// `failure_timeout` is no longer live. Uses tokio's clock, so tests can
/// pause time.
#[derive(Clone, Debug)]
pub struct MemoryCluster {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug)]
struct Inner {
    failure_timeout: Duration,
    namespaces: HashMap<String, HashMap<NodeId, Slot>>,
    isolated: HashSet<NodeId>,
}

#[derive(Debug)]
struct Slot {
    value: String,
    changed_at: Instant,
    heard_at: Instant,
}

impl Default for MemoryCluster {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryCluster {
    /// An empty cluster with the default failure timeout (5 s).
    pub fn new() -> Self {
        Self::with_failure_timeout(DEFAULT_FAILURE_TIMEOUT)
    }

    /// An empty cluster where silence for `failure_timeout` means dead.
    pub fn with_failure_timeout(failure_timeout: Duration) -> Self {
        MemoryCluster {
            inner: Arc::new(Mutex::new(Inner {
                failure_timeout,
                namespaces: HashMap::new(),
                isolated: HashSet::new(),
            })),
        }
    }

    /// Writes `value` as `node`'s report in `namespace`, as a peer of another
    /// version, or a broken one, would: for tests of what the core does with
    /// values it cannot read. Stored as a publish would store it.
    pub fn inject(&self, namespace: &str, node: &NodeId, value: &str) {
        self.lock().put(namespace, node, value, Instant::now());
    }

    /// Fault injection: from now on, `node`'s publishes are lost, as if it had
    /// crashed or been cut off. Others see its report go stale, then the
    /// member disappear after the failure timeout.
    pub fn isolate(&self, node: &NodeId) {
        self.lock().isolated.insert(node.clone());
    }

    /// Undoes [`isolate`](Self::isolate).
    pub fn heal(&self, node: &NodeId) {
        self.lock().isolated.remove(node);
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The state stays consistent under a panic (every update is a single
        // insert or remove), so a poisoned lock is safe to reuse.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Inner {
    /// Stores `node`'s value; its age starts again only if it changed.
    fn put(&mut self, namespace: &str, node: &NodeId, value: &str, now: Instant) {
        let members = self.namespaces.entry(namespace.to_owned()).or_default();
        let slot = members.entry(node.clone()).or_insert_with(|| Slot {
            value: value.to_owned(),
            changed_at: now,
            heard_at: now,
        });
        if slot.value != value {
            slot.changed_at = now;
            value.clone_into(&mut slot.value);
        }
        slot.heard_at = now;
    }
}

impl ClusterBackend for MemoryCluster {
    async fn publish(
        &self,
        namespace: &str,
        node: &NodeId,
        value: &str,
    ) -> Result<(), BackendError> {
        let now = Instant::now();
        let mut inner = self.lock();
        if inner.isolated.contains(node) {
            return Ok(());
        }
        let members = inner.namespaces.entry(namespace.to_owned()).or_default();
        match members.get_mut(node) {
            Some(slot) => {
                if slot.value != value {
                    slot.changed_at = now;
                    value.clone_into(&mut slot.value);
                }
                slot.heard_at = now;
            }
            None => {
                members.insert(
                    node.clone(),
                    Slot {
                        value: value.to_owned(),
                        changed_at: now,
                        heard_at: now,
                    },
                );
            }
        }
        Ok(())
    }

    async fn view(&self, namespace: &str) -> Result<Vec<MemberRecord>, BackendError> {
        let now = Instant::now();
        let mut inner = self.lock();
        let timeout = inner.failure_timeout;
        let Some(members) = inner.namespaces.get_mut(namespace) else {
            return Ok(Vec::new());
        };
        members.retain(|_, slot| now.duration_since(slot.heard_at) <= timeout);
        Ok(members
            .iter()
            .map(|(node, slot)| MemberRecord {
                node: node.clone(),
                incarnation: 0,
                value: slot.value.clone(),
                age: now.duration_since(slot.changed_at),
            })
            .collect())
    }

    /// Writes `left` in place of the report; it expires like any value.
    async fn leave(&self, namespace: &str, node: &NodeId) -> Result<(), BackendError> {
        self.publish(namespace, node, clb_core::wire::LEFT).await
    }
}
