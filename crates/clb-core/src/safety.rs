//! Safety limits applied to every strategy's decision (SPEC §4, "Safety"):
//! the hard cap, settle rounds after a membership change, and pacing.

use std::collections::VecDeque;
use std::time::Duration;

use rand_core::Rng;

use crate::report::NodeId;
use crate::time::Millis;

/// Caps an amount at `fraction` of the node's own count (rounded down) and,
/// always, at the count itself: a bug or a bad report cannot empty a node.
pub fn hard_cap(amount: u64, own_count: u64, fraction: Option<f64>) -> u64 {
    let by_fraction = fraction.map_or(own_count, |f| {
        ((own_count as f64 * f).floor() as u64).min(own_count)
    });
    amount.min(by_fraction)
}

/// Remembers the last complete round's members and holds shedding for
/// `settle_rounds` complete rounds after any change.
#[derive(Debug, Default, Clone)]
pub struct Settle {
    last_members: Option<Vec<NodeId>>,
    remaining: u32,
}

impl Settle {
    /// Records the sorted members a balancer finds when it starts, unless a
    /// round has already set them: the first round then compares with them.
    pub fn baseline<'a>(&mut self, members: impl Iterator<Item = &'a NodeId>) {
        if self.last_members.is_none() {
            self.last_members = Some(members.cloned().collect());
        }
    }

    /// Feeds the sorted members of a complete round; returns how many rounds
    /// of holding were left *before* this one, so `> 0` means hold now.
    ///
    /// The round that first sees a change counts as the first held round.
    /// The first round compares with the [`baseline`](Self::baseline) taken
    /// at start; without one, it only sets the baseline (a node that has just
    /// started holds little to shed, and the members that were already there
    /// see its arrival as a change and settle).
    pub fn observe<'a>(
        &mut self,
        members: impl ExactSizeIterator<Item = &'a NodeId> + Clone,
        settle_rounds: u32,
    ) -> u32 {
        match &self.last_members {
            Some(last) if last.len() == members.len() && last.iter().eq(members.clone()) => {}
            Some(_) => {
                self.last_members = Some(members.cloned().collect());
                self.remaining = settle_rounds;
            }
            None => self.last_members = Some(members.cloned().collect()),
        }
        let before = self.remaining;
        self.remaining = self.remaining.saturating_sub(1);
        before
    }
}

/// One paced batch: shed `n` at `at`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Batch {
    /// When the batch is due.
    pub at: Millis,
    /// How many to shed.
    pub n: u64,
}

/// A decided amount spread over a window in jittered batches, so reconnects
/// do not arrive as one storm.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShedPlan {
    batches: VecDeque<Batch>,
}

impl ShedPlan {
    /// Splits `amount` into at most `max_batches` near-equal batches, batch
    /// `i` due at a uniformly jittered point of the `i`-th equal slot of
    /// `window` after `now`. A zero window gives one batch, due now.
    pub fn new(
        now: Millis,
        amount: u64,
        window: Duration,
        max_batches: u32,
        rng: &mut impl Rng,
    ) -> Self {
        if amount == 0 {
            return ShedPlan::default();
        }
        let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        let k = if window_ms == 0 {
            1
        } else {
            amount.min(u64::from(max_batches.max(1))).min(window_ms)
        };
        let slot_ms = window_ms / k;
        let (base, extra) = (amount / k, amount % k);
        let batches = (0..k)
            .map(|i| {
                let jitter = if slot_ms == 0 {
                    0
                } else {
                    rng.next_u64() % slot_ms
                };
                Batch {
                    at: Millis(now.0.saturating_add(i * slot_ms + jitter)),
                    n: base + u64::from(i < extra),
                }
            })
            .collect();
        ShedPlan { batches }
    }

    /// When the next batch is due, if any remains.
    pub fn next_due(&self) -> Option<Millis> {
        self.batches.front().map(|b| b.at)
    }

    /// Takes every batch due at `now`, summed; `None` if none is due.
    pub fn take_due(&mut self, now: Millis) -> Option<u64> {
        let mut n = 0;
        while let Some(b) = self.batches.front().filter(|b| b.at <= now) {
            n += b.n;
            self.batches.pop_front();
        }
        (n > 0).then_some(n)
    }

    /// Drops what is left and returns how much that was.
    pub fn cancel(&mut self) -> u64 {
        let left = self.remaining();
        self.batches.clear();
        left
    }

    /// How much is still to shed.
    pub fn remaining(&self) -> u64 {
        self.batches.iter().map(|b| b.n).sum()
    }

    /// The batches still planned, in order.
    pub fn batches(&self) -> impl Iterator<Item = &Batch> {
        self.batches.iter()
    }
}

#[cfg(test)]
mod tests {
    use rand_chacha::ChaCha8Rng;
    use rand_core::SeedableRng;

    use super::*;

    #[test]
    fn hard_cap_rounds_down_and_never_exceeds_count() {
        assert_eq!(hard_cap(500, 1000, Some(0.1)), 100);
        assert_eq!(hard_cap(50, 1000, Some(0.1)), 50);
        assert_eq!(hard_cap(5, 9, Some(0.1)), 0);
        assert_eq!(hard_cap(500, 100, None), 100);
    }

    #[test]
    fn settle_holds_for_the_change_round_and_the_next() {
        let ab: Vec<NodeId> = vec!["a".into(), "b".into()];
        let abc: Vec<NodeId> = vec!["a".into(), "b".into(), "c".into()];
        let mut s = Settle::default();
        assert_eq!(
            s.observe(ab.iter(), 2),
            0,
            "the first round sets the baseline"
        );
        assert_eq!(s.observe(ab.iter(), 2), 0);
        assert_eq!(
            s.observe(abc.iter(), 2),
            2,
            "a join: this round and the next are held"
        );
        assert!(s.observe(abc.iter(), 2) > 0);
        assert_eq!(s.observe(abc.iter(), 2), 0);
        assert!(s.observe(ab.iter(), 2) > 0, "a leave");
        let mut off = Settle::default();
        assert_eq!(off.observe(ab.iter(), 0), 0);
        assert_eq!(off.observe(abc.iter(), 0), 0);
    }

    #[test]
    fn plan_spreads_batches_over_the_window_and_sums_to_the_amount() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let plan = ShedPlan::new(Millis(1000), 95, Duration::from_millis(5000), 10, &mut rng);
        let batches: Vec<Batch> = plan.batches().copied().collect();
        assert_eq!(batches.len(), 10);
        assert_eq!(batches.iter().map(|b| b.n).sum::<u64>(), 95);
        for (i, b) in batches.iter().enumerate() {
            let slot_start = 1000 + i as u64 * 500;
            assert!(
                (slot_start..slot_start + 500).contains(&b.at.0),
                "batch {i} at {:?}",
                b.at
            );
            assert!(b.n == 9 || b.n == 10);
        }
    }

    #[test]
    fn zero_window_is_one_batch_now() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut plan = ShedPlan::new(Millis(3), 42, Duration::ZERO, 10, &mut rng);
        assert_eq!(plan.next_due(), Some(Millis(3)));
        assert_eq!(plan.take_due(Millis(3)), Some(42));
        assert_eq!(plan.next_due(), None);
    }

    #[test]
    fn take_due_merges_overdue_batches_and_cancel_returns_the_rest() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut plan = ShedPlan::new(Millis(0), 30, Duration::from_millis(300), 3, &mut rng);
        assert_eq!(plan.take_due(Millis(199)), Some(20));
        assert_eq!(plan.cancel(), 10);
        assert_eq!(plan.take_due(Millis(10_000)), None);
    }
}
