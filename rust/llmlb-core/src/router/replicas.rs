//! Decisions of other router replicas (active-active): each replica tells the others
//! what it routed and when those requests got their first token or ended, and counts
//! theirs as in-flight load, prefill backlog and provisional prefix credit, so that every
//! replica routes on the whole cluster's load. Outcomes stay with the replica that routed
//! (its breakers and windows); here they only stop counting.

use crate::clock::secs_to_ns;
use crate::error::CoreResult;
use crate::lifecycle::InFlight;

use super::{release_counts, Router};

/// Between a replica's name and its request id in the remote registry's keys.
pub(super) const SEPARATOR: char = '\u{1f}';

/// One decision of another replica ([`super::RouteDecision`]'s figures).
#[derive(Debug, Clone, Copy)]
pub struct RemoteRoute<'a> {
    pub replica: &'a str,
    pub request_id: &'a str,
    pub node_id: &'a str,
    /// The prompt's whole chain (credit goes past what the node is credited with here).
    pub hashes: &'a [u64],
    /// Whether `hashes` are text (char) blocks.
    pub text_blocks: bool,
    pub prompt_tokens: u32,
    pub prefill_tokens: u64,
    /// The index's predicted cached tokens on the node (the decision's
    /// `matched_tokens`): counted with the prompt in the totals the node's engine hit
    /// counters are compared with (its cache trust sees every replica's prompts, as
    /// the engine does). None for a decision applied again (a snapshot).
    pub matched_tokens: Option<u32>,
    /// When the replica routed it (seconds on this router's clock; None: now).
    pub routed_at_s: Option<f64>,
}

fn key(replica: &str, request_id: &str) -> String {
    format!("{replica}{SEPARATOR}{request_id}")
}

impl Router {
    /// Counts another replica's decision. False when it is already counted (a repeat);
    /// UnknownNode when this replica does not know the node.
    pub fn apply_remote_route(&self, route: &RemoteRoute<'_>) -> CoreResult<bool> {
        let node = self.table.get(route.node_id)?;
        let now = self.clock.now_ns();
        let started_ns = route.routed_at_s.map_or(now, secs_to_ns).min(now);
        let record = InFlight {
            node: node.clone(),
            started_ns,
            policy: self.config.load().policy,
            prompt_tokens: route.prompt_tokens,
            prefill_tokens: route.prefill_tokens,
            probe: false,
        };
        node.live.acquire(route.prefill_tokens, now);
        if self
            .remote_in_flight
            .insert(key(route.replica, route.request_id), record)
            .is_err()
        {
            node.live.release();
            node.live.release_prefill(route.prefill_tokens, now);
            return Ok(false);
        }
        if let Some(matched) = route.matched_tokens {
            node.live.count_prompt(
                route.prompt_tokens as u64,
                matched.min(route.prompt_tokens) as u64,
            );
        }
        if !route.hashes.is_empty() {
            let held = self.index.peek(route.hashes, now).depth_of(node.slot);
            self.credit_routed(&node, route.hashes, held, route.text_blocks, now);
        }
        Ok(true)
    }

    /// Another replica's request got its first token. False when unknown here.
    pub fn apply_remote_first_token(&self, replica: &str, request_id: &str) -> bool {
        let Some((node, prefill)) = self.remote_in_flight.end_prefill(&key(replica, request_id))
        else {
            return false;
        };
        node.live.release_prefill(prefill, self.clock.now_ns());
        true
    }

    /// Another replica's request ended. False when unknown here (never counted, or
    /// already released).
    pub fn apply_remote_completion(&self, replica: &str, request_id: &str) -> bool {
        let Some(request) = self.remote_in_flight.take(&key(replica, request_id)) else {
            return false;
        };
        release_counts(&request, self.clock.now_ns());
        true
    }

    /// A replica is gone (its heartbeat lapsed): its requests stop counting. Returns
    /// how many.
    pub fn forget_replica(&self, replica: &str) -> usize {
        let prefix = format!("{replica}{SEPARATOR}");
        let now = self.clock.now_ns();
        let gone = self.remote_in_flight.take_prefixed(&prefix);
        for request in &gone {
            release_counts(request, now);
        }
        gone.len()
    }

    /// Requests of other replicas counted here.
    pub fn remote_in_flight_total(&self) -> usize {
        self.remote_in_flight.len()
    }
}
