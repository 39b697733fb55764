//! Time source of a router: the monotonic clock, or a manual one driven by the caller
//! (the discrete-event simulator runs the real router on virtual time).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

#[derive(Debug)]
pub enum Clock {
    Monotonic,
    Manual(AtomicU64),
}

fn process_start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

impl Clock {
    pub fn manual() -> Self {
        Clock::Manual(AtomicU64::new(0))
    }

    /// Nanoseconds since an arbitrary fixed origin.
    pub fn now_ns(&self) -> u64 {
        match self {
            Clock::Monotonic => process_start().elapsed().as_nanos() as u64,
            Clock::Manual(t) => t.load(Ordering::Acquire),
        }
    }

    /// Moves a manual clock to `ns`; time never goes backwards. Returns false on a
    /// monotonic clock, which cannot be set.
    pub fn set_ns(&self, ns: u64) -> bool {
        match self {
            Clock::Monotonic => false,
            Clock::Manual(t) => {
                t.fetch_max(ns, Ordering::AcqRel);
                true
            }
        }
    }
}

pub(crate) fn secs_to_ns(secs: f64) -> u64 {
    (secs * 1e9).max(0.0) as u64
}
