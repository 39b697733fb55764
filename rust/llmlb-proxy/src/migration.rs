//! Requests that can still move: routed and sent, but no byte back from the backend yet.
//!
//! When a node's breaker trips, the service calls `migrate(node_id, request_ids)`; each
//! such attempt is cancelled and its request re-sent to another node. The client sees
//! only the eventual answer.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::oneshot;

/// An attempt's node, and the signal that cancels it.
type Attempt = (Arc<str>, oneshot::Sender<()>);

#[derive(Default)]
pub struct MovableRequests {
    attempts: Mutex<HashMap<String, Attempt>>,
}

impl MovableRequests {
    /// `request_id` waits for its first byte from `node_id`; the receiver fires if it
    /// is migrated.
    pub fn add(&self, request_id: &str, node_id: Arc<str>) -> oneshot::Receiver<()> {
        let (moved, on_moved) = oneshot::channel();
        self.attempts
            .lock()
            .insert(request_id.to_owned(), (node_id, moved));
        on_moved
    }

    pub fn remove(&self, request_id: &str) {
        self.attempts.lock().remove(request_id);
    }

    pub fn len(&self) -> usize {
        self.attempts.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Cancels the attempts on `node_id` (all of them when `request_ids` is None) and
    /// returns the ids that will be re-sent; ids that already stream, finished, or run
    /// on another node are left alone.
    pub fn migrate(&self, node_id: &str, request_ids: Option<&[String]>) -> Vec<String> {
        let mut attempts = self.attempts.lock();
        let ids: Vec<String> = match request_ids {
            Some(ids) => ids.to_vec(),
            None => attempts.keys().cloned().collect(),
        };
        let mut moved = Vec::new();
        for id in ids {
            let on_node = attempts
                .get(&id)
                .is_some_and(|(node, _)| &**node == node_id);
            if !on_node {
                continue;
            }
            if let Some((_, signal)) = attempts.remove(&id) {
                if signal.send(()).is_ok() {
                    moved.push(id);
                }
            }
        }
        moved
    }
}
