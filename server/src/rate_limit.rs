//! Request rate limits: a token bucket per device, and for requests that fail authentication one
//! per client address and one per claimed device id (the id part of a token whose secret is
//! wrong), so guessing tokens is slowed from one address and at one device from many. Only failed
//! requests take from those two: a valid token is served whatever its address or id was sent by
//! others, so one attacker behind the same NAT or proxy as the fleet cannot lock the fleet out.
//! The same buckets, counted per hour, bound what one device can make the audit log write
//! ([`RateLimiter::per_period`]).
//!
//! A bucket holds up to `burst` requests and refills at `per_minute`; a request takes one. The
//! defaults are far above what a phone needs (a whole deployment syncs in a few pages), so only a
//! broken or hostile client ever meets them. Buckets live in memory, in a map bounded to
//! [`MAX_TRACKED`] entries: a bucket that has refilled is the same as no bucket, so idle ones are
//! dropped first when the map is full.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use auxilio_core::DeviceId;

/// The most buckets kept at once (about 100 bytes each).
pub const MAX_TRACKED: usize = 10_000;

/// How many requests a device (or an address sending bad tokens) may make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    /// Sustained requests per minute; 0 turns the limits off.
    pub per_minute: u32,
    /// Requests that may come at once after a quiet spell.
    pub burst: u32,
}

impl Default for RateLimits {
    /// 600 a minute with bursts of 120. A sync is one request per page (512 KiB of changes by
    /// default): 1,000 encounters go up and come down in about 3 requests, and the end-to-end
    /// tests' busiest device (a link cut every few hundred bytes) sends a few dozen. A coordinator's
    /// map redraw is four or five requests.
    fn default() -> Self {
        Self {
            per_minute: 600,
            burst: 120,
        }
    }
}

/// Who a bucket counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Client {
    /// An authenticated device.
    Device(DeviceId),
    /// A client address whose requests failed authentication.
    Address(IpAddr),
    /// A device id named by tokens whose secret was wrong.
    ClaimedDevice(DeviceId),
    /// Requests that failed authentication and whose address is unknown (a router driven in
    /// process, without a socket).
    UnknownAddress,
}

/// Over the limit: try again after this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub retry_after: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// The buckets of every client, shared by all requests (cheap to clone).
#[derive(Debug, Clone)]
pub struct RateLimiter {
    /// Requests a full bucket holds; 0 turns the limiter off.
    burst: u32,
    /// Refill, in requests per second; 0 turns the limiter off.
    per_second: f64,
    buckets: Arc<Mutex<HashMap<Client, Bucket>>>,
}

impl RateLimiter {
    pub fn new(limits: RateLimits) -> Self {
        Self::with_rate(limits.burst, f64::from(limits.per_minute) / 60.0)
    }

    /// At most `count` requests per `period` (all at once, then one every `period / count`);
    /// 0 turns the limiter off.
    pub fn per_period(count: u32, period: Duration) -> Self {
        let seconds = period.as_secs_f64();
        let per_second = if seconds > 0.0 {
            f64::from(count) / seconds
        } else {
            0.0
        };
        Self::with_rate(count, per_second)
    }

    fn with_rate(burst: u32, per_second: f64) -> Self {
        Self {
            burst,
            per_second,
            buckets: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    fn enabled(&self) -> bool {
        self.per_second > 0.0 && self.burst > 0
    }

    fn per_second(&self) -> f64 {
        self.per_second
    }

    /// The bucket's tokens at `now`, refilled since it was last touched.
    fn refilled(&self, bucket: &Bucket, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        (bucket.tokens + elapsed * self.per_second()).min(f64::from(self.burst))
    }

    /// How long until a bucket holding `tokens` holds one.
    fn wait_for_one(&self, tokens: f64) -> Duration {
        Duration::from_secs_f64(((1.0 - tokens) / self.per_second()).max(0.0))
    }

    /// Takes one request from `client`'s bucket, or says how long to wait for one.
    pub fn take(&self, client: Client, now: Instant) -> Result<(), Limited> {
        if !self.enabled() {
            return Ok(());
        }
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if !buckets.contains_key(&client) && buckets.len() >= MAX_TRACKED {
            self.evict(&mut buckets, now);
        }
        let burst = f64::from(self.burst);
        let bucket = buckets.entry(client).or_insert(Bucket {
            tokens: burst,
            updated: now,
        });
        let tokens = self.refilled(bucket, now);
        bucket.updated = now;
        if tokens >= 1.0 {
            bucket.tokens = tokens - 1.0;
            Ok(())
        } else {
            bucket.tokens = tokens;
            Err(Limited {
                retry_after: self.wait_for_one(tokens),
            })
        }
    }

    /// Whether `client` is out of requests now, without taking one: an address that used up its
    /// failed attempts is answered before its token is even looked up.
    pub fn check(&self, client: Client, now: Instant) -> Result<(), Limited> {
        if !self.enabled() {
            return Ok(());
        }
        let buckets = self
            .buckets
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        match buckets.get(&client) {
            Some(bucket) if self.refilled(bucket, now) < 1.0 => Err(Limited {
                retry_after: self.wait_for_one(self.refilled(bucket, now)),
            }),
            _ => Ok(()),
        }
    }

    /// Makes room for one more bucket: drops every bucket that has refilled (it is the same as
    /// none), and if all are busy, the one untouched the longest.
    fn evict(&self, buckets: &mut HashMap<Client, Bucket>, now: Instant) {
        let burst = f64::from(self.burst);
        buckets.retain(|_, bucket| self.refilled(bucket, now) < burst);
        if buckets.len() >= MAX_TRACKED
            && let Some(oldest) = buckets
                .iter()
                .min_by_key(|(_, bucket)| bucket.updated)
                .map(|(client, _)| *client)
        {
            buckets.remove(&oldest);
        }
    }

    /// Buckets held now.
    pub fn tracked(&self) -> usize {
        self.buckets
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_minute: u32, burst: u32) -> RateLimiter {
        RateLimiter::new(RateLimits { per_minute, burst })
    }

    #[test]
    fn a_burst_passes_then_requests_wait_for_the_refill() {
        let limiter = limiter(60, 3);
        let device = Client::Device(DeviceId::from_bytes([1; 16]));
        let start = Instant::now();
        for _ in 0..3 {
            limiter.take(device, start).unwrap();
        }
        let limited = limiter.take(device, start).unwrap_err();
        assert_eq!(limited.retry_after, Duration::from_secs(1));
        assert!(limiter.check(device, start).is_err());
        let later = start + Duration::from_millis(1500);
        limiter.take(device, later).unwrap();
        assert!(
            limiter.take(device, later).is_err(),
            "one refilled, one taken"
        );
    }

    #[test]
    fn clients_have_separate_buckets() {
        let limiter = limiter(60, 1);
        let now = Instant::now();
        limiter
            .take(Client::Device(DeviceId::from_bytes([1; 16])), now)
            .unwrap();
        limiter
            .take(Client::Device(DeviceId::from_bytes([2; 16])), now)
            .unwrap();
        limiter
            .take(Client::Address([127, 0, 0, 1].into()), now)
            .unwrap();
        assert!(
            limiter
                .take(Client::Device(DeviceId::from_bytes([1; 16])), now)
                .is_err()
        );
    }

    #[test]
    fn a_per_hour_quota_allows_its_count_then_one_per_share_of_the_hour() {
        let limiter = RateLimiter::per_period(3, Duration::from_secs(3600));
        let device = Client::Device(DeviceId::from_bytes([1; 16]));
        let start = Instant::now();
        for _ in 0..3 {
            limiter.take(device, start).unwrap();
        }
        let limited = limiter.take(device, start).unwrap_err();
        assert!((limited.retry_after.as_secs_f64() - 1200.0).abs() < 0.001);
        limiter
            .take(device, start + Duration::from_secs(1201))
            .unwrap();
    }

    #[test]
    fn zero_turns_the_limits_off() {
        let limiter = limiter(0, 0);
        let device = Client::Device(DeviceId::from_bytes([1; 16]));
        let now = Instant::now();
        for _ in 0..10_000 {
            limiter.take(device, now).unwrap();
        }
        assert_eq!(limiter.tracked(), 0);
    }

    #[test]
    fn the_map_stays_bounded_and_drops_idle_buckets_first() {
        let limiter = limiter(60, 2);
        let start = Instant::now();
        let busy = Client::Device(DeviceId::from_bytes([0xff; 16]));
        limiter.take(busy, start).unwrap();
        limiter.take(busy, start).unwrap();
        for n in 0..(MAX_TRACKED as u32 + 500) {
            let address = Client::Address(std::net::Ipv4Addr::from(n).into());
            limiter.take(address, start).unwrap();
        }
        assert!(limiter.tracked() <= MAX_TRACKED);
        // Ten seconds on, every bucket has refilled: all are idle and dropped at the next insert.
        let later = start + Duration::from_secs(10);
        limiter
            .take(Client::Device(DeviceId::from_bytes([1; 16])), later)
            .unwrap();
        assert!(limiter.tracked() < 10, "idle buckets were dropped");
    }
}
