//! Admission control: a cap on the proxy's requests in flight with a bounded wait queue
//! (a deadline per waiter), and a token bucket per API key. A request refused here gets
//! a 429 with `Retry-After` instead of piling onto the backends.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::error::ProxyError;

/// Limits from the service's config (`proxy.admission`, `api_keys[].rate`); reloadable.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct AdmissionLimits {
    /// At most this many proxied requests at once (None: no cap).
    pub max_in_flight: Option<usize>,
    /// Requests that may wait for a place; beyond: 429 at once.
    pub queue_size: usize,
    /// How long a request may wait for a place (then 429).
    pub queue_timeout: Duration,
}

/// Requests per second and burst of one API key.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KeyRate {
    pub per_s: f64,
    pub burst: f64,
}

#[derive(Default)]
pub struct Admission {
    in_flight: AtomicUsize,
    waiting: AtomicUsize,
    released: Notify,
    buckets: Mutex<HashMap<Arc<str>, Bucket>>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// A place among the requests in flight, given back when dropped.
pub struct Permit {
    admission: Option<Arc<Admission>>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(admission) = self.admission.take() {
            admission.in_flight.fetch_sub(1, Ordering::AcqRel);
            admission.released.notify_one();
        }
    }
}

/// Why a request was refused (the route-error label) and its answer.
pub type Shed = (&'static str, ProxyError);

impl Admission {
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    /// A place for one request: at once while under the cap and nobody waits, else after
    /// waiting in line (first come, first served) up to `queue_timeout`.
    pub async fn admit(self: &Arc<Self>, limits: AdmissionLimits) -> Result<Permit, Shed> {
        let Some(cap) = limits.max_in_flight else {
            return Ok(Permit { admission: None });
        };
        if self.waiting() == 0 && self.try_take(cap) {
            return Ok(self.permit());
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= limits.queue_size {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(("queue_full", too_many("The proxy's wait queue is full.", 1)));
        }
        let _in_line = InLine(self);
        let deadline = tokio::time::Instant::now() + limits.queue_timeout;
        loop {
            let released = self.released.notified();
            if self.try_take(cap) {
                return Ok(self.permit());
            }
            tokio::select! {
                _ = released => {}
                _ = tokio::time::sleep_until(deadline) => {
                    let retry = limits.queue_timeout.as_secs().max(1);
                    return Err(("queue_timeout", too_many("No place freed up in time.", retry)));
                }
            }
        }
    }

    fn try_take(&self, cap: usize) -> bool {
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < cap).then_some(n + 1)
            })
            .is_ok()
    }

    fn permit(self: &Arc<Self>) -> Permit {
        Permit {
            admission: Some(self.clone()),
        }
    }

    /// Takes a token from `key`'s bucket, or says how long until one is there.
    pub fn rate_limit(&self, key: &Arc<str>, rate: KeyRate) -> Result<(), Shed> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock();
        let bucket = buckets.entry(key.clone()).or_insert(Bucket {
            tokens: rate.burst,
            at: now,
        });
        let refill = now.duration_since(bucket.at).as_secs_f64() * rate.per_s;
        bucket.tokens = (bucket.tokens + refill).min(rate.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        let wait_s = ((1.0 - bucket.tokens) / rate.per_s).ceil().max(1.0) as u64;
        let message = format!(
            "Rate limit of {} requests/s for this API key reached.",
            rate.per_s
        );
        Err((
            "rate_limited",
            too_many(&message, wait_s).with_code("rate_limit_exceeded"),
        ))
    }
}

/// Leaves the wait queue however the wait ends.
struct InLine<'a>(&'a Admission);

impl Drop for InLine<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

fn too_many(message: &str, retry_after_s: u64) -> ProxyError {
    ProxyError::too_many_requests(message, retry_after_s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(cap: usize, queue: usize, timeout_ms: u64) -> AdmissionLimits {
        AdmissionLimits {
            max_in_flight: Some(cap),
            queue_size: queue,
            queue_timeout: Duration::from_millis(timeout_ms),
        }
    }

    #[tokio::test]
    async fn a_full_proxy_queues_then_sheds() {
        let admission = Arc::new(Admission::default());
        let first = admission.admit(limits(1, 1, 200)).await.unwrap();
        let waiter = {
            let admission = admission.clone();
            tokio::spawn(async move { admission.admit(limits(1, 1, 2_000)).await.is_ok() })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(admission.waiting(), 1);
        let (kind, error) = admission.admit(limits(1, 1, 200)).await.err().unwrap();
        assert_eq!((kind, error.status.as_u16()), ("queue_full", 429));
        drop(first);
        assert!(waiter.await.unwrap(), "the waiter got the freed place");
        assert_eq!((admission.in_flight(), admission.waiting()), (0, 0));
        let held = admission.admit(limits(1, 1, 50)).await.unwrap();
        let (kind, _) = admission.admit(limits(1, 1, 50)).await.err().unwrap();
        assert_eq!(kind, "queue_timeout");
        drop(held);
        assert!(admission.admit(AdmissionLimits::default()).await.is_ok());
    }

    #[test]
    fn a_key_gets_its_burst_then_its_rate() {
        let admission = Admission::default();
        let key: Arc<str> = Arc::from("team-a");
        let rate = KeyRate {
            per_s: 1.0,
            burst: 3.0,
        };
        for _ in 0..3 {
            assert!(admission.rate_limit(&key, rate).is_ok());
        }
        let (kind, error) = admission.rate_limit(&key, rate).err().unwrap();
        assert_eq!((kind, error.code), ("rate_limited", "rate_limit_exceeded"));
        assert_eq!(error.retry_after_s, Some(1));
    }
}
