//! Per-token rate limit: a token bucket per token, in this process's memory.
//!
//! Each web replica keeps its own buckets, so behind a load balancer with N
//! replicas a token may get up to N times the rate. That is accepted: the
//! limit protects the database from a runaway client, it is not a quota.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use uuid::Uuid;

/// Token buckets, one per API token.
pub(crate) struct RateLimiter {
    per_sec: f64,
    burst: f64,
    buckets: Mutex<HashMap<Uuid, (f64, Instant)>>,
}

impl RateLimiter {
    /// `per_sec` requests a second on average, up to `burst` at once.
    pub fn new(per_sec: u32, burst: u32) -> Self {
        Self {
            per_sec: f64::from(per_sec.max(1)),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request from the token's bucket, or tells in how many
    /// seconds one is available.
    pub fn take(&self, token: Uuid) -> Result<(), u64> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() > 100_000 {
            // Forget idle tokens now and then; a full bucket is the default anyway.
            let burst = self.burst;
            let per_sec = self.per_sec;
            buckets.retain(|_, (level, at)| {
                *level + now.duration_since(*at).as_secs_f64() * per_sec < burst
            });
        }
        let (level, at) = buckets.entry(token).or_insert((self.burst, now));
        *level = (*level + now.duration_since(*at).as_secs_f64() * self.per_sec).min(self.burst);
        *at = now;
        if *level >= 1.0 {
            *level -= 1.0;
            Ok(())
        } else {
            let wait = ((1.0 - *level) / self.per_sec).ceil().clamp(1.0, 3600.0);
            Err(std::time::Duration::from_secs_f64(wait).as_secs())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_refusal_with_a_retry_time() {
        let limiter = RateLimiter::new(1, 3);
        let t = Uuid::new_v4();
        for _ in 0..3 {
            assert!(limiter.take(t).is_ok());
        }
        assert_eq!(limiter.take(t), Err(1));
        assert!(
            limiter.take(Uuid::new_v4()).is_ok(),
            "other tokens are not affected"
        );
    }
}
