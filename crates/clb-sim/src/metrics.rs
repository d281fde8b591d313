//! The SPEC §6 figures of merit. The simulator computes them from its
//! recorded rounds; `clb demo` computes the same ones from a live cluster.

use crate::{RoundRecord, SimReport};

/// The first round `r` such that the counts at the end of `r` and of every
/// later round satisfy `ok`; 0 if they did from the start. `None` if the last
/// counts do not.
pub(crate) fn converged_round(
    records: &[RoundRecord],
    final_counts: &[u64],
    ok: impl Fn(&[u64]) -> bool,
) -> Option<u32> {
    // The counts at the end of round r are the counts before round r + 1.
    let mut ends: Vec<&[u64]> = records
        .iter()
        .skip(1)
        .map(|r| r.counts.as_slice())
        .collect();
    ends.push(final_counts);
    if !ok(final_counts) {
        return None;
    }
    let last_bad = ends.iter().rposition(|c| !ok(c));
    match last_bad {
        Some(i) => Some(u32::try_from(i + 2).unwrap_or(u32::MAX)),
        None if records.first().is_some_and(|r| ok(&r.counts)) => Some(0),
        None => Some(1),
    }
}

/// The original's sense of balanced: `max <= avg * (1 + dev / 100)`.
pub fn within_classic(counts: &[u64], dev_percent: f64) -> bool {
    let Some(&max) = counts.iter().max() else {
        return true;
    };
    let avg = counts.iter().sum::<u64>() as f64 / counts.len() as f64;
    max as f64 <= avg * (1.0 + dev_percent / 100.0)
}

/// Every node within `percent`% of its (equal-weight) target, or within
/// `abs_tolerance`, whichever is larger. Two-sided.
pub fn within_band(counts: &[u64], percent: f64, abs_tolerance: u64) -> bool {
    if counts.is_empty() {
        return true;
    }
    let target = counts.iter().sum::<u64>() as f64 / counts.len() as f64;
    let band = (target * percent / 100.0).max(abs_tolerance as f64);
    counts.iter().all(|&c| (c as f64 - target).abs() <= band)
}

/// The fewest moves that balance `counts`: the sum of excesses over target.
pub fn ideal_shed(counts: &[u64]) -> u64 {
    if counts.is_empty() {
        return 0;
    }
    let target = counts.iter().sum::<u64>() as f64 / counts.len() as f64;
    counts
        .iter()
        .map(|&c| (c as f64 - target).max(0.0))
        .sum::<f64>()
        .round() as u64
}

pub(crate) fn peak_node_shed_fraction(records: &[RoundRecord]) -> f64 {
    records
        .iter()
        .flat_map(|r| r.counts.iter().zip(&r.shed))
        .filter(|(c, _)| **c > 0)
        .map(|(&c, &s)| s as f64 / c as f64)
        .fold(0.0, f64::max)
}

/// `total_shed / ideal_shed` to three decimals (stable, readable JSON);
/// `None` when there was nothing to balance.
pub fn churn_ratio(total_shed: u64, ideal_shed: u64) -> Option<f64> {
    (ideal_shed > 0).then(|| (total_shed as f64 / ideal_shed as f64 * 1000.0).round() / 1000.0)
}

/// The largest `|count - target| / target` over nodes, in percent, with
/// equal weights.
pub fn max_deviation_percent(counts: &[u64]) -> f64 {
    let target = counts.iter().sum::<u64>() as f64 / counts.len().max(1) as f64;
    if target <= 0.0 {
        return 0.0;
    }
    counts
        .iter()
        .map(|&c| (c as f64 - target).abs() / target * 100.0)
        .fold(0.0, f64::max)
}

impl SimReport {
    pub(crate) fn with_churn(mut self) -> Self {
        self.churn_ratio = churn_ratio(self.total_shed, self.ideal_shed);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(round: u32, counts: &[u64]) -> RoundRecord {
        RoundRecord {
            round,
            counts: counts.to_vec(),
            shed: vec![0; counts.len()],
        }
    }

    #[test]
    fn converged_round_is_the_first_round_after_which_it_holds_for_good() {
        let ok = |c: &[u64]| within_classic(c, 25.0);
        let records = [
            rec(1, &[200, 0]),
            rec(2, &[100, 100]),
            rec(3, &[200, 0]),
            rec(4, &[100, 100]),
        ];
        assert_eq!(converged_round(&records, &[100, 100], ok), Some(3));
        assert_eq!(converged_round(&records, &[200, 0], ok), None);
        let already = [rec(1, &[100, 100])];
        assert_eq!(converged_round(&already, &[100, 100], ok), Some(0));
        let one = [rec(1, &[200, 0])];
        assert_eq!(converged_round(&one, &[100, 100], ok), Some(1));
    }

    #[test]
    fn bands_are_two_sided_with_an_absolute_floor() {
        assert!(within_band(&[105, 95], 5.0, 0));
        assert!(!within_band(&[106, 94], 5.0, 0));
        assert!(within_band(&[6, 4], 5.0, 2));
        assert!(!within_classic(&[126, 74], 25.0));
    }

    #[test]
    fn ideal_shed_is_the_sum_of_excesses() {
        assert_eq!(ideal_shed(&[300, 100, 200]), 100);
        assert_eq!(ideal_shed(&[5]), 0);
    }

    #[test]
    fn churn_and_deviation() {
        assert_eq!(churn_ratio(3, 2), Some(1.5));
        assert_eq!(churn_ratio(3, 0), None);
        assert_eq!(max_deviation_percent(&[110, 90, 100]), 10.0);
        assert_eq!(max_deviation_percent(&[0, 0]), 0.0);
    }
}
