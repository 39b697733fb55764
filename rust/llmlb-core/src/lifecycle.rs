//! Requests in flight: counted on `route`, released exactly once by `complete` or by
//! expiry when no completion ever comes.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::error::{CoreError, CoreResult};
use crate::node_table::NodeEntry;
use crate::outcome::Outcome;
use crate::policy::PolicyKind;

const SHARDS: usize = 32;

#[derive(Debug, Clone)]
pub struct InFlight {
    pub node: Arc<NodeEntry>,
    pub started_ns: u64,
    pub policy: PolicyKind,
    pub prompt_tokens: u32,
    /// Uncached prompt tokens counted in the node's prefill backlog; 0 once released
    /// (first token, or the end of the request).
    pub prefill_tokens: u64,
    pub probe: bool,
}

/// What a completion released, for the caller's breaker and metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub request_id: String,
    pub node_id: Arc<str>,
    pub policy: PolicyKind,
    pub outcome: Outcome,
    pub duration_s: f64,
    pub was_probe: bool,
    /// The node's consecutive failures right after this outcome (0 after a success).
    pub consecutive_failures: u32,
}

#[derive(Debug)]
pub struct InFlightRegistry {
    shards: Vec<Mutex<HashMap<String, InFlight>>>,
    hasher: RandomState,
}

impl Default for InFlightRegistry {
    fn default() -> Self {
        InFlightRegistry {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
        }
    }
}

impl InFlightRegistry {
    fn shard(&self, id: &str) -> &Mutex<HashMap<String, InFlight>> {
        &self.shards[self.hasher.hash_one(id) as usize % SHARDS]
    }

    pub fn contains(&self, id: &str) -> bool {
        self.shard(id).lock().contains_key(id)
    }

    /// Fails if the id is already in flight.
    pub fn insert(&self, id: String, request: InFlight) -> CoreResult<()> {
        let mut shard = self.shard(&id).lock();
        if shard.contains_key(&id) {
            return Err(CoreError::DuplicateRequest(id));
        }
        shard.insert(id, request);
        Ok(())
    }

    /// Marks the request's prefill done: returns its node and the prefill tokens to
    /// release, once (`None` when unknown; 0 tokens on a repeat).
    pub fn end_prefill(&self, id: &str) -> Option<(Arc<NodeEntry>, u64)> {
        let mut shard = self.shard(id).lock();
        let request = shard.get_mut(id)?;
        Some((
            request.node.clone(),
            std::mem::take(&mut request.prefill_tokens),
        ))
    }

    pub fn take(&self, id: &str) -> Option<InFlight> {
        self.shard(id).lock().remove(id)
    }

    /// Removes and returns requests started before `deadline_ns`.
    pub fn take_started_before(&self, deadline_ns: u64) -> Vec<(String, InFlight)> {
        let mut expired = Vec::new();
        for shard in &self.shards {
            let mut shard = shard.lock();
            let stale: Vec<String> = shard
                .iter()
                .filter(|(_, r)| r.started_ns < deadline_ns)
                .map(|(id, _)| id.clone())
                .collect();
            for id in stale {
                if let Some(r) = shard.remove(&id) {
                    expired.push((id, r));
                }
            }
        }
        expired
    }

    /// Removes and returns the requests whose id starts with `prefix`.
    pub fn take_prefixed(&self, prefix: &str) -> Vec<InFlight> {
        let mut taken = Vec::new();
        for shard in &self.shards {
            let mut shard = shard.lock();
            let ids: Vec<String> = (shard.keys())
                .filter(|id| id.starts_with(prefix))
                .cloned()
                .collect();
            taken.extend(ids.iter().filter_map(|id| shard.remove(id)));
        }
        taken
    }

    pub fn ids_on_node(&self, node_id: &str) -> Vec<String> {
        let mut ids = Vec::new();
        for shard in &self.shards {
            ids.extend(
                shard
                    .lock()
                    .iter()
                    .filter(|(_, r)| &*r.node.spec.id == node_id)
                    .map(|(id, _)| id.clone()),
            );
        }
        ids.sort();
        ids
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
