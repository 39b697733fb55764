//! What the proxy tells the routing service (metrics, breakers, other replicas): pushed
//! on the request path without blocking, taken by the service in batches.

use std::sync::Arc;
use std::time::Duration;

use llmlb_core::{Completion, PolicyKind, RouteDecision};
use parking_lot::{Condvar, Mutex};

/// Which front door saw a request (metrics label them apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Proxy,
    ExtProc,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Proxy => "proxy",
            Transport::ExtProc => "ext_proc",
        }
    }
}

#[derive(Debug)]
pub enum ProxyEvent {
    Routed {
        policy: PolicyKind,
        reason: &'static str,
        seconds: f64,
        canary: bool,
        /// The decision itself when `Control::share_decisions` is on.
        decision: Option<Box<RouteDecision>>,
        /// The name of the client's API key, when keys are configured.
        api_key: Option<Arc<str>>,
    },
    /// A request refused before or by routing (`kind`: the route-error label).
    Refused {
        transport: Transport,
        kind: &'static str,
    },
    /// Only with `Control::share_decisions` (the router itself already knows).
    FirstToken { request_id: String },
    Completed {
        completion: Completion,
        ttft_s: Option<f64>,
    },
    /// A tokenized model's request routed by text (its chat template refused it).
    TokenizerFallback { model: String },
}

/// Most events kept when nobody takes them (a stalled service must not grow memory).
pub const MAX_QUEUED_EVENTS: usize = 1_000_000;

#[derive(Debug, Default)]
pub struct EventQueue {
    events: Mutex<Vec<ProxyEvent>>,
    ready: Condvar,
    dropped: std::sync::atomic::AtomicU64,
}

impl EventQueue {
    pub fn push(&self, event: ProxyEvent) {
        let mut events = self.events.lock();
        if events.len() >= MAX_QUEUED_EVENTS {
            self.dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return;
        }
        events.push(event);
        if events.len() == 1 {
            self.ready.notify_one();
        }
    }

    /// Blocks until an event is queued or `timeout` passes; true when some are queued.
    pub fn wait(&self, timeout: Duration) -> bool {
        let mut events = self.events.lock();
        if events.is_empty() {
            self.ready.wait_for(&mut events, timeout);
        }
        !events.is_empty()
    }

    pub fn take(&self) -> Vec<ProxyEvent> {
        std::mem::take(&mut *self.events.lock())
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
    }
}
