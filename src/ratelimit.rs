//! Per-client rate limiting: a token bucket per source address.
//!
//! Loopback clients are exempt by default (health checks, the host's own
//! tools, benchmarks); a misbehaving microVM is held to its share so that it
//! cannot starve the others or turn the proxy into an amplifier.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use tokio::time::Instant;

const SHARDS: usize = 16;
/// Buckets kept per shard before idle ones are swept.
const MAX_TRACKED: usize = 4096;

struct Bucket {
    tokens: f64,
    last: Instant,
}

pub struct RateLimiter {
    /// Queries per second per client; 0 turns limiting off.
    rate: f64,
    burst: f64,
    exempt_loopback: bool,
    shards: Vec<Mutex<HashMap<IpAddr, Bucket>>>,
}

impl RateLimiter {
    pub fn new(rate_per_sec: u32, exempt_loopback: bool) -> RateLimiter {
        RateLimiter {
            rate: rate_per_sec as f64,
            burst: (rate_per_sec as f64 * 2.0).max(1.0),
            exempt_loopback,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    pub fn allow(&self, ip: IpAddr, now: Instant) -> bool {
        if self.rate <= 0.0 || (self.exempt_loopback && crate::net::canonical(ip).is_loopback()) {
            return true;
        }
        let idx = match ip {
            IpAddr::V4(v4) => v4.octets()[3] as usize,
            IpAddr::V6(v6) => v6.octets()[15] as usize,
        } % SHARDS;
        let mut m = self.shards[idx].lock().unwrap_or_else(|e| e.into_inner());
        if m.len() >= MAX_TRACKED {
            // Forget clients whose bucket has refilled: they lose nothing.
            let full = self.burst;
            let rate = self.rate;
            m.retain(|_, b| b.tokens + now.saturating_duration_since(b.last).as_secs_f64() * rate < full);
        }
        let b = m.entry(ip).or_insert(Bucket {
            tokens: self.burst,
            last: now,
        });
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.rate).min(self.burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn bucket_limits_and_refills() {
        let r = RateLimiter::new(10, true);
        let vm: IpAddr = "10.61.0.7".parse().unwrap();
        let allowed = (0..100).filter(|_| r.allow(vm, Instant::now())).count();
        assert_eq!(allowed, 20, "burst is twice the rate");
        tokio::time::advance(Duration::from_secs(1)).await;
        let allowed = (0..100).filter(|_| r.allow(vm, Instant::now())).count();
        assert_eq!(allowed, 10);
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        assert!((0..1000).all(|_| r.allow(lo, Instant::now())));
    }
}
