//! Failed-login rate limiting, per user name and per client address.
//!
//! After `max_failures` failures within a window the key is blocked until
//! the window ends (answered 429 with Retry-After). In-process state: with
//! several replicas each enforces its own limit.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Past this many tracked keys, expired ones are pruned; if still too many
/// (an attacker spraying names), the oldest state is dropped wholesale.
const MAX_KEYS: usize = 100_000;

pub struct Limiter {
    max_failures: u32,
    window: Duration,
    state: Mutex<HashMap<String, (Instant, u32)>>,
}

impl Limiter {
    pub fn new(max_failures: u32, window_secs: u64) -> Limiter {
        Limiter {
            max_failures: max_failures.max(1),
            window: Duration::from_secs(window_secs.max(1)),
            state: Mutex::new(HashMap::new()),
        }
    }

    /// Seconds to wait if any of `keys` is blocked.
    pub fn blocked(&self, keys: &[String]) -> Option<u64> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        keys.iter()
            .filter_map(|k| state.get(k))
            .filter(|(start, n)| {
                *n >= self.max_failures && now.duration_since(*start) < self.window
            })
            .map(|(start, _)| {
                // Rounded up: a client that waits exactly this long is let in.
                let left = self.window - now.duration_since(*start);
                left.as_secs() + u64::from(left.subsec_nanos() > 0)
            })
            .max()
    }

    pub fn failed(&self, keys: &[String]) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if state.len() >= MAX_KEYS {
            state.retain(|_, (start, _)| now.duration_since(*start) < self.window);
            if state.len() >= MAX_KEYS {
                state.clear();
            }
        }
        for k in keys {
            let e = state.entry(k.clone()).or_insert((now, 0));
            if now.duration_since(e.0) >= self.window {
                *e = (now, 0);
            }
            e.1 += 1;
        }
    }

    pub fn succeeded(&self, keys: &[String]) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for k in keys {
            state.remove(k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_max_failures() {
        let l = Limiter::new(3, 60);
        let keys = vec!["user:a".to_string(), "ip:1.2.3.4".to_string()];
        for _ in 0..2 {
            l.failed(&keys);
        }
        assert_eq!(l.blocked(&keys), None);
        l.failed(&keys);
        assert!(l.blocked(&keys).unwrap() > 0);
        // another user from the same address is blocked too
        assert!(
            l.blocked(&["user:b".to_string(), "ip:1.2.3.4".to_string()])
                .is_some()
        );
        l.succeeded(&keys);
        assert_eq!(l.blocked(&keys), None);
    }
}
