//! `/v1/models`: the union of what the backends list and the models configured on the
//! router's nodes, cached for `models_ttl`; also each request's model check.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use parking_lot::Mutex;
use serde_json::Value;

use crate::shared::Shared;
use crate::upstream::backend_uri;

#[derive(Default)]
struct Listing {
    models: Vec<Value>,
    ids: HashSet<String>,
    /// Backends that answered the last fetch.
    answered: usize,
    fetched_at: Option<Instant>,
}

#[derive(Default)]
pub struct ModelCatalog {
    listing: Mutex<Arc<Listing>>,
    /// Held while a fetch runs, so concurrent requests share one.
    fetching: tokio::sync::Mutex<()>,
}

/// The entry of a model named in a node's config that no backend listed.
fn configured_model(id: &str) -> Value {
    serde_json::json!({"id": id, "object": "model", "owned_by": "llmlb"})
}

impl ModelCatalog {
    fn current(&self) -> Arc<Listing> {
        self.listing.lock().clone()
    }

    fn is_stale(listing: &Listing, shared: &Shared) -> bool {
        listing
            .fetched_at
            .is_none_or(|at| at.elapsed() > shared.settings.models_ttl)
    }

    /// The merged model objects and how many backends answered.
    pub async fn models(shared: &Arc<Shared>) -> (Vec<Value>, usize) {
        let mut listing = shared.catalog.current();
        if Self::is_stale(&listing, shared) {
            listing = Self::refresh(shared).await;
        }
        (listing.models.clone(), listing.answered)
    }

    /// Some(known) when at least one backend answered; None when none did (the request
    /// is let through and the router decides from the nodes' configured models).
    pub async fn knows(shared: &Arc<Shared>, model: &str) -> Option<bool> {
        let mut listing = shared.catalog.current();
        if listing.fetched_at.is_none() {
            listing = Self::refresh(shared).await;
        } else if Self::is_stale(&listing, shared) {
            // Serve the last answer meanwhile: the request path does not wait.
            let shared = shared.clone();
            tokio::spawn(async move { Self::refresh(&shared).await });
        }
        (listing.answered > 0).then(|| listing.ids.contains(model))
    }

    async fn refresh(shared: &Arc<Shared>) -> Arc<Listing> {
        let _fetching = shared.catalog.fetching.lock().await;
        let listing = shared.catalog.current();
        if !Self::is_stale(&listing, shared) {
            return listing; // another request fetched it meanwhile
        }
        let fresh = Arc::new(Self::fetch_all(shared).await);
        *shared.catalog.listing.lock() = fresh.clone();
        fresh
    }

    async fn fetch_all(shared: &Arc<Shared>) -> Listing {
        let nodes = shared.router.node_statuses();
        let addresses: BTreeSet<String> = nodes
            .iter()
            .map(|n| n.spec.address.clone())
            .filter(|a| !a.is_empty())
            .collect();
        let mut fetches = tokio::task::JoinSet::new();
        for (position, address) in addresses.into_iter().enumerate() {
            let shared = shared.clone();
            fetches.spawn(async move { (position, fetch(&shared, &address).await) });
        }
        let mut answers = fetches.join_all().await;
        answers.sort_by_key(|(position, _)| *position);
        let answers = answers.into_iter().map(|(_, models)| models);
        let mut listing = Listing::default();
        for models in answers.into_iter().flatten() {
            listing.answered += 1;
            for model in models {
                let id = model["id"].as_str().unwrap_or_default().to_owned();
                if listing.ids.insert(id) {
                    listing.models.push(model);
                }
            }
        }
        for node in &nodes {
            for id in &node.spec.models {
                if listing.ids.insert(id.clone()) {
                    listing.models.push(configured_model(id));
                }
            }
        }
        listing.fetched_at = Some(Instant::now());
        listing
    }
}

/// One backend's model objects (those with a string id); None when it did not answer.
async fn fetch(shared: &Shared, address: &str) -> Option<Vec<Value>> {
    let uri = backend_uri(address, "/v1/models").ok()?;
    let request = Request::builder()
        .method(Method::GET)
        .uri(uri)
        .body(Full::new(Bytes::new()))
        .ok()?;
    let timeout = shared.settings.models_fetch_timeout;
    let answer = tokio::time::timeout(timeout, async {
        let response = shared.client.request(request).await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        response
            .into_body()
            .collect()
            .await
            .ok()
            .map(|b| b.to_bytes())
    })
    .await
    .ok()
    .flatten()?;
    let document: Value = serde_json::from_slice(&answer).ok()?;
    let data = document.get("data")?.as_array()?;
    Some(
        data.iter()
            .filter(|m| m.get("id").is_some_and(Value::is_string))
            .cloned()
            .collect(),
    )
}
