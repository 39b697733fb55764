//! What every request handler shares: the core router, settings, the service's control
//! and the event queue; routing one attempt, and the slot it holds until it completes.

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use llmlb_core::{CoreError, Outcome, Prompt, RouteDecision, RouteRequest, Router};

use crate::admission::Admission;
use crate::catalog::ModelCatalog;
use crate::error::ProxyError;
use crate::events::{EventQueue, ProxyEvent, Transport};
use crate::metering::ResponseMeter;
use crate::migration::MovableRequests;
use crate::routing_key::RoutingKey;
use crate::settings::{Control, ProxySettings};
use crate::tokenize::{EngineTokenizer, Tokenized};
use crate::upstream::{self, UpstreamClient};

/// Who sent a request: its session (canary stickiness), API key name and front door.
pub struct Client<'a> {
    pub session_id: &'a str,
    pub api_key: Option<Arc<str>>,
    pub transport: Transport,
}

pub struct Shared {
    pub router: Arc<Router>,
    pub settings: ProxySettings,
    pub control: ArcSwap<Control>,
    pub events: Arc<EventQueue>,
    pub movable: MovableRequests,
    pub catalog: ModelCatalog,
    pub client: UpstreamClient,
    pub tokenizer: Option<Arc<dyn EngineTokenizer>>,
    pub admission: Arc<Admission>,
}

impl Shared {
    pub fn new(
        router: Arc<Router>,
        settings: ProxySettings,
        tokenizer: Option<Arc<dyn EngineTokenizer>>,
    ) -> Self {
        Shared {
            client: upstream::client(&settings),
            catalog: ModelCatalog::default(),
            router,
            settings,
            control: ArcSwap::from_pointee(Control::default()),
            events: Arc::default(),
            movable: MovableRequests::default(),
            tokenizer,
            admission: Arc::default(),
        }
    }

    pub fn refuse(&self, transport: Transport, kind: &'static str) {
        self.events.push(ProxyEvent::Refused { transport, kind });
    }

    /// Routes one attempt to a node not in `failed`; once the request has failed on
    /// every node that can take it, to any node again (a transient fault may be gone).
    pub fn route(
        self: &Arc<Self>,
        key: &RoutingKey,
        client: &Client<'_>,
        failed: &[Arc<str>],
    ) -> Result<Slot, ProxyError> {
        self.route_within(key, client, failed, &[])
    }

    /// [`Shared::route`] never to a node in `outside` (a gateway's endpoint subset).
    pub fn route_within(
        self: &Arc<Self>,
        key: &RoutingKey,
        client: &Client<'_>,
        failed: &[Arc<str>],
        outside: &[Arc<str>],
    ) -> Result<Slot, ProxyError> {
        let control = self.control.load();
        if control.draining {
            self.refuse(client.transport, "draining");
            return Err(ProxyError::draining());
        }
        let policy = control
            .canary
            .and_then(|canary| canary.choose(client.session_id, fastrand::u64(..)));
        let started = Instant::now();
        let mut routed = self.route_once(key, policy, failed, outside);
        if !failed.is_empty() && matches!(routed, Err(CoreError::NoAvailableNode(_))) {
            routed = self.route_once(key, policy, &[], outside);
        }
        let seconds = started.elapsed().as_secs_f64();
        match routed {
            Err(error) => {
                let (answer, kind) = ProxyError::from_route(&error, &key.model);
                self.refuse(client.transport, kind);
                Err(answer)
            }
            Ok(decision) => {
                let slot = Slot::new(self.clone(), &decision);
                self.events.push(ProxyEvent::Routed {
                    policy: decision.policy,
                    reason: decision.reason.as_str(),
                    seconds,
                    canary: policy.is_some(),
                    decision: control.share_decisions.then(|| Box::new(decision)),
                    api_key: client.api_key.clone(),
                });
                Ok(slot)
            }
        }
    }

    fn route_once(
        &self,
        key: &RoutingKey,
        policy: Option<llmlb_core::PolicyKind>,
        failed: &[Arc<str>],
        outside: &[Arc<str>],
    ) -> Result<RouteDecision, CoreError> {
        let exclude: Vec<&str> = failed.iter().chain(outside).map(|id| &**id).collect();
        let prompt = match (&key.token_ids, &key.prompt) {
            (Some(ids), _) => Prompt::Tokens(ids),
            (None, Some(text)) => Prompt::Text(text),
            (None, None) => Prompt::Empty,
        };
        self.router.route(&RouteRequest {
            prompt,
            request_id: None,
            expected_output_tokens: key.expected_output_tokens,
            // No model: a bodyless request an ext_proc picker routes at its headers.
            model: (!key.model.is_empty()).then_some(key.model.as_str()),
            adapter: None,
            exclude: &exclude,
            policy,
        })
    }

    /// The key as the engine's tokens when its model has a tokenizer (on a blocking
    /// thread: tokenizing costs about 1 µs per token).
    pub async fn engine_tokens(&self, key: RoutingKey) -> RoutingKey {
        let tokenized = self.control.load().tokenized_models.contains(&key.model);
        let Some(tokenizer) = self.tokenizer.clone().filter(|_| tokenized) else {
            return key;
        };
        if key.token_ids.is_some() {
            return key;
        }
        let request = key.clone();
        let answer = tokio::task::spawn_blocking(move || tokenizer.tokenize(&request)).await;
        match answer {
            Ok(Some(Tokenized::Tokens(ids))) => RoutingKey {
                prompt: None,
                token_ids: Some(ids),
                ..key
            },
            Ok(Some(Tokenized::Refused)) => {
                self.events.push(ProxyEvent::TokenizerFallback {
                    model: key.model.clone(),
                });
                key
            }
            Ok(None) | Err(_) => key,
        }
    }
}

/// A routed attempt's place on its node: released exactly once, by `complete` or, when
/// the handler is dropped (client gone, proxy stopping), as `ok` (the node did nothing
/// wrong).
pub struct Slot {
    shared: Arc<Shared>,
    pub request_id: String,
    pub node_id: Arc<str>,
    pub address: String,
    prompt_tokens: u32,
    done: bool,
}

impl Slot {
    fn new(shared: Arc<Shared>, decision: &RouteDecision) -> Self {
        Slot {
            shared,
            request_id: decision.request_id.clone(),
            node_id: decision.node_id.clone(),
            address: decision.address.clone(),
            prompt_tokens: decision.prompt_tokens,
            done: false,
        }
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The first token arrived: the prompt no longer counts as queued prefill.
    pub fn first_token(&self) {
        let router = &self.shared.router;
        if router.first_token(&self.request_id) && self.shared.control.load().share_decisions {
            self.shared.events.push(ProxyEvent::FirstToken {
                request_id: self.request_id.clone(),
            });
        }
    }

    pub fn complete(
        &mut self,
        outcome: Outcome,
        ttft_s: Option<f64>,
        meter: Option<&ResponseMeter>,
    ) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let tokens_in = meter
            .and_then(|m| m.prompt_tokens)
            .unwrap_or(u64::from(self.prompt_tokens));
        let tokens_out = meter.map_or(0, ResponseMeter::tokens_out);
        let released =
            self.shared
                .router
                .complete(&self.request_id, outcome, ttft_s, tokens_in, tokens_out);
        if let Ok(Some(completion)) = released {
            self.shared
                .events
                .push(ProxyEvent::Completed { completion, ttft_s });
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.complete(Outcome::Ok, None, None);
    }
}
