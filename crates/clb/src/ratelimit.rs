//! Rate-limited logging: a hostile peer must not be able to flood the log,
//! and a flood must still be visible.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lets one occurrence per key through every `every`, and says how many
/// were held back in between, so a log line reads "dropped 4,210 datagrams
/// in the last 10 s" rather than nothing, or 4,210 lines.
///
/// ```
/// use std::time::Duration;
/// use clb::ratelimit::RateLimiter;
///
/// let limiter = RateLimiter::new(Duration::from_secs(3600));
/// assert_eq!(limiter.hit("bad_signature"), Some(1)); // the first is logged
/// assert_eq!(limiter.hit("bad_signature"), None); // held back
/// assert_eq!(limiter.hit("replayed"), Some(1)); // keys are independent
/// ```
#[derive(Debug)]
pub struct RateLimiter {
    every: Duration,
    keys: Mutex<HashMap<&'static str, Window>>,
}

#[derive(Debug)]
struct Window {
    logged_at: Instant,
    held: u64,
}

impl RateLimiter {
    /// At most one line per key per `every`.
    pub fn new(every: Duration) -> Self {
        RateLimiter {
            every,
            keys: Mutex::new(HashMap::new()),
        }
    }

    /// Records one occurrence of `key`. `Some(n)` when this one should be
    /// logged: `n` occurrences (this one included) since the last line.
    pub fn hit(&self, key: &'static str) -> Option<u64> {
        let now = Instant::now();
        // A map of counters stays usable whatever panicked holding it.
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        match keys.get_mut(key) {
            None => {
                keys.insert(
                    key,
                    Window {
                        logged_at: now,
                        held: 0,
                    },
                );
                Some(1)
            }
            Some(w) if now.duration_since(w.logged_at) >= self.every => {
                let n = w.held + 1;
                w.logged_at = now;
                w.held = 0;
                Some(n)
            }
            Some(w) => {
                w.held += 1;
                None
            }
        }
    }
}

impl Default for RateLimiter {
    /// One line per key every 10 seconds.
    fn default() -> Self {
        RateLimiter::new(Duration::from_secs(10))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_what_it_held_back() {
        let limiter = RateLimiter::new(Duration::ZERO);
        assert_eq!(limiter.hit("a"), Some(1));
        assert_eq!(limiter.hit("a"), Some(1), "a zero window logs everything");
        let limiter = RateLimiter::new(Duration::from_millis(30));
        assert_eq!(limiter.hit("a"), Some(1));
        for _ in 0..5 {
            assert_eq!(limiter.hit("a"), None);
        }
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(limiter.hit("a"), Some(6), "five held back, and this one");
    }
}
