//! Response-rate limiting on UDP (`dns_config.rate_limit`; off by default, like Knot's RRL).
//! A flood of queries with a forged source turns a DNS server into an amplifier aimed at that
//! source; limiting the answers each source network gets caps what it can be sent. Answers to
//! one source prefix (`/24` for IPv4, `/56` for IPv6 by default) beyond
//! `responses_per_second` (with one second of burst) are dropped, except every `slip`-th,
//! which goes out empty with TC set: a real client behind that prefix retries over TCP and is
//! answered, a forged victim receives a few bytes. TCP is never limited — its source cannot be
//! forged.
//!
//! Bounds: at most `table_size` source prefixes are tracked; when the table is full it is
//! emptied (every prefix starts again with a full bucket). Refusals are logged at most every
//! 10 s, with how many and the last prefix.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

use crate::config::RateLimitConfig;
use crate::refusals::Refusals;

/// What to send a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Answer,
    /// An empty answer with TC, so a real client retries over TCP.
    Slip,
    Drop,
}

struct Bucket {
    /// Answers it may still be sent now, scaled by 1,000 (so refills are exact integers).
    milli_tokens: u64,
    refilled: Instant,
    limited: u64,
}

pub struct RateLimiter {
    config: RateLimitConfig,
    buckets: Mutex<HashMap<u128, Bucket>>,
    refusals: Refusals,
}

impl RateLimiter {
    /// `None` when the config turns limiting off.
    pub fn new(config: &RateLimitConfig) -> Option<RateLimiter> {
        (config.responses_per_second > 0).then(|| RateLimiter {
            config: config.clone(),
            buckets: Mutex::default(),
            refusals: Refusals::default(),
        })
    }

    /// The prefix `ip` counts under, as a number (the address with its host bits cleared,
    /// IPv4 tagged apart from IPv6).
    fn prefix(&self, ip: IpAddr) -> u128 {
        match ip {
            IpAddr::V4(v4) => {
                let bits = u32::from(self.config.ipv4_prefix_length.min(32));
                let mask = if bits == 0 { 0 } else { u32::MAX << (32 - bits) };
                (1u128 << 64) | u128::from(u32::from(v4) & mask)
            }
            IpAddr::V6(v6) => {
                let bits = u32::from(self.config.ipv6_prefix_length.min(128));
                let mask = if bits == 0 { 0 } else { u128::MAX << (128 - bits) };
                (u128::from(v6) & mask) | 1
            }
        }
    }

    /// Whether an answer may go to `ip` now.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Verdict {
        let rate = u64::from(self.config.responses_per_second);
        let capacity = rate * 1000;
        let key = self.prefix(ip);
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= self.config.table_size as usize && !buckets.contains_key(&key) {
            buckets.clear();
        }
        let bucket = buckets.entry(key).or_insert(Bucket { milli_tokens: capacity, refilled: now, limited: 0 });
        let elapsed_ms = now.saturating_duration_since(bucket.refilled).as_millis() as u64;
        if elapsed_ms > 0 {
            bucket.milli_tokens = (bucket.milli_tokens + elapsed_ms * rate).min(capacity);
            bucket.refilled = now;
        }
        if bucket.milli_tokens >= 1000 {
            bucket.milli_tokens -= 1000;
            return Verdict::Answer;
        }
        bucket.limited += 1;
        let slip = u64::from(self.config.slip);
        let verdict = if slip > 0 && bucket.limited.is_multiple_of(slip) { Verdict::Slip } else { Verdict::Drop };
        drop(buckets);
        if let Some(count) = self.refusals.refused() {
            tracing::warn!(
                count,
                source = %ip,
                limit = self.config.responses_per_second,
                "DNS UDP answers rate-limited (dns_config.rate_limit): the source's prefix exceeded its rate"
            );
        }
        verdict
    }
}

/// `answer` (a full reply to the same query) cut to its header and question, with TC set.
pub fn slipped(answer: &[u8]) -> Option<Vec<u8>> {
    let mut message = hickory_proto::op::Message::from_vec(answer).ok()?;
    message.answers.clear();
    message.authorities.clear();
    message.additionals.clear();
    message.metadata.truncation = true;
    message.to_vec().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limiter(rate: u32, slip: u32) -> RateLimiter {
        RateLimiter::new(&RateLimitConfig { responses_per_second: rate, slip, ..Default::default() }).expect("on")
    }

    #[test]
    fn a_prefix_gets_its_rate_with_a_second_of_burst_and_every_slip_th_refusal_is_tc() {
        let rl = limiter(10, 2);
        let t0 = Instant::now();
        let flood: Vec<Verdict> = (0..30).map(|_| rl.check("10.0.0.1".parse().unwrap(), t0)).collect();
        assert_eq!(flood.iter().filter(|v| **v == Verdict::Answer).count(), 10, "the burst");
        assert_eq!(flood.iter().filter(|v| **v == Verdict::Slip).count(), 10, "every 2nd refusal slips");
        // Same /24, another address: the same bucket. Another /24: its own.
        assert_eq!(rl.check("10.0.0.200".parse().unwrap(), t0), Verdict::Drop);
        assert_eq!(rl.check("10.0.1.1".parse().unwrap(), t0), Verdict::Answer);
        // Refilled at the rate: 100 ms later, one more answer.
        let later = t0 + Duration::from_millis(100);
        assert_eq!(rl.check("10.0.0.1".parse().unwrap(), later), Verdict::Answer);
        assert_ne!(rl.check("10.0.0.1".parse().unwrap(), later), Verdict::Answer);
        assert!(RateLimiter::new(&RateLimitConfig::default()).is_none(), "off by default");
    }

    #[test]
    fn ipv6_prefixes_and_a_full_table() {
        let rl = RateLimiter::new(&RateLimitConfig {
            responses_per_second: 1,
            slip: 0,
            table_size: 2,
            ..Default::default()
        })
        .expect("on");
        let t0 = Instant::now();
        assert_eq!(rl.check("2001:db8:0:1::1".parse().unwrap(), t0), Verdict::Answer);
        assert_eq!(rl.check("2001:db8:0:1::2".parse().unwrap(), t0), Verdict::Drop, "same /56, slip 0");
        assert_eq!(rl.check("2001:db8:0:100::1".parse().unwrap(), t0), Verdict::Answer, "another /56");
        // A third prefix fills the table: it is emptied, and the first prefix starts anew.
        assert_eq!(rl.check("192.0.2.1".parse().unwrap(), t0), Verdict::Answer);
        assert_eq!(rl.check("2001:db8:0:1::1".parse().unwrap(), t0), Verdict::Answer);
    }
}
