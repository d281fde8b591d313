//! Runs many simulations on every core, with one progress bar.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clb_sim::{SimReport, SimSpec};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// `runs` seeds of one spec: seed, seed + 1, ...
pub fn run_seeds(spec: &SimSpec, runs: u32) -> anyhow::Result<Vec<SimReport>> {
    let specs: Vec<SimSpec> = (0..runs)
        .map(|i| SimSpec {
            seed: spec.seed.wrapping_add(u64::from(i)),
            ..spec.clone()
        })
        .collect();
    run_all(&specs)
}

/// Every spec, in parallel, results in input order. Each run is
/// deterministic on its own, so the order of execution changes nothing.
pub fn run_all(specs: &[SimSpec]) -> anyhow::Result<Vec<SimReport>> {
    let total: u64 = specs.iter().map(|s| u64::from(s.rounds)).sum();
    let progress = Progress::new(total);
    let next = AtomicUsize::new(0);
    let results: Vec<Mutex<Option<Result<SimReport, clb_sim::SimError>>>> =
        specs.iter().map(|_| Mutex::new(None)).collect();
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(specs.len().max(1));
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(spec) = specs.get(i) else { break };
                    let mut reported = 0u64;
                    let result = clb_sim::run(spec, |done, all| {
                        // Warm-up rounds are not in `rounds`: scale to them.
                        let done = u64::from(done) * u64::from(spec.rounds) / u64::from(all.max(1));
                        progress.add(done.saturating_sub(reported));
                        reported = done;
                    });
                    if let Ok(mut slot) = results[i].lock() {
                        *slot = Some(result);
                    }
                }
            });
        }
    });
    progress.finish();
    results
        .into_iter()
        .map(|slot| {
            let result = slot
                .into_inner()
                .ok()
                .flatten()
                .ok_or_else(|| anyhow::anyhow!("a simulation thread failed"))?;
            Ok(result?)
        })
        .collect()
}

/// A progress bar on stderr, shown only once the work has taken a while,
/// and never when stderr is not a terminal (indicatif hides it then).
struct Progress {
    started: Instant,
    total: u64,
    done: AtomicU64,
    bar: Mutex<Option<ProgressBar>>,
}

impl Progress {
    fn new(total: u64) -> Self {
        Progress {
            started: Instant::now(),
            total,
            done: AtomicU64::new(0),
            bar: Mutex::new(None),
        }
    }

    fn add(&self, n: u64) {
        let done = self.done.fetch_add(n, Ordering::Relaxed) + n;
        if self.started.elapsed() < Duration::from_millis(500) {
            return;
        }
        let Ok(mut bar) = self.bar.lock() else { return };
        let bar = bar.get_or_insert_with(|| {
            let bar = ProgressBar::with_draw_target(Some(self.total), ProgressDrawTarget::stderr());
            if let Ok(style) =
                ProgressStyle::with_template("simulating {bar:40} {pos}/{len} rounds, eta {eta}")
            {
                bar.set_style(style);
            }
            bar
        });
        bar.set_position(done);
    }

    fn finish(&self) {
        if let Ok(bar) = self.bar.lock() {
            if let Some(bar) = bar.as_ref() {
                bar.finish_and_clear();
            }
        }
    }
}
