//! The request loop: route, send, retry or migrate before the first byte, then relay the
//! response; the router hears of each attempt exactly once.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue, CONTENT_LENGTH};
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use llmlb_core::Outcome;

use crate::error::ProxyError;
use crate::metering::ResponseMeter;
use crate::relay::{ProxyBody, RelayBody};
use crate::routing_key::RoutingKey;
use crate::settings::backoff_delay;
use crate::shared::{Client, Shared, Slot};
use crate::upstream::{backend_uri, end_to_end};

pub const NODE_HEADER: &str = "x-llmlb-node";
pub const REQUEST_ID_HEADER: &str = "x-llmlb-request-id";
pub const SESSION_HEADER: &str = "x-session-id";
/// A migrated request may move at most this many times (a cascade of trips).
pub const MAX_MIGRATIONS: u32 = 3;

/// What an attempt got before its first byte.
enum FirstBytes {
    Whole(http::response::Parts, Bytes),
    Stream(http::response::Parts, Bytes, Incoming),
}

enum Failure {
    /// Another node may do better: connect errors, 5xx, a close before the first byte.
    Retryable(String),
    /// Cancelled by `migrate`: route again.
    Migrated,
    Timeout,
}

pub struct Outgoing<'a> {
    pub path: &'a str,
    pub headers: HeaderMap,
    pub client: Client<'a>,
    pub body: Bytes,
}

pub async fn forward(
    shared: &Arc<Shared>,
    outgoing: &Outgoing<'_>,
    key: &RoutingKey,
) -> Result<Response<ProxyBody>, ProxyError> {
    let settings = &shared.settings;
    let mut failed: Vec<Arc<str>> = Vec::new();
    let (mut retries, mut migrations) = (0u32, 0u32);
    loop {
        let mut slot = shared.route(key, &outgoing.client, &failed)?;
        let sent_at = Instant::now();
        match attempt(shared, &slot, outgoing).await {
            Ok(first) => {
                slot.first_token();
                return Ok(relay(shared, slot, first, sent_at));
            }
            Err(Failure::Retryable(why)) => {
                slot.complete(Outcome::Error, None, None);
                failed.push(slot.node_id.clone());
                retries += 1;
                if retries >= settings.max_attempts {
                    return Err(ProxyError::upstream_failed(format!(
                        "All {retries} attempts failed; last: {why}"
                    )));
                }
                let delay = backoff_delay(retries - 1, settings.backoff_base, settings.backoff_cap);
                tokio::time::sleep(delay).await;
            }
            Err(Failure::Migrated) => {
                slot.complete(Outcome::Error, None, None);
                failed.push(slot.node_id.clone());
                migrations += 1;
                if migrations > MAX_MIGRATIONS {
                    return Err(ProxyError::no_backend(
                        "The request was migrated too many times.",
                    ));
                }
            }
            Err(Failure::Timeout) => {
                slot.complete(Outcome::Timeout, None, None);
                return Err(ProxyError::upstream_timeout(
                    settings.request_timeout.as_secs_f64(),
                ));
            }
        }
    }
}

/// Removes an attempt from the movable set however it ends.
struct Movable<'a>(&'a Shared, &'a str);

impl Drop for Movable<'_> {
    fn drop(&mut self) {
        self.0.movable.remove(self.1);
    }
}

async fn attempt(
    shared: &Shared,
    slot: &Slot,
    outgoing: &Outgoing<'_>,
) -> Result<FirstBytes, Failure> {
    let moved = shared.movable.add(&slot.request_id, slot.node_id.clone());
    let _movable = Movable(shared, &slot.request_id);
    let open = open(shared, &slot.address, outgoing);
    tokio::select! {
        biased;
        Ok(()) = moved => Err(Failure::Migrated),
        opened = tokio::time::timeout(shared.settings.request_timeout, open) => {
            opened.unwrap_or(Err(Failure::Timeout))
        }
    }
}

async fn open(
    shared: &Shared,
    address: &str,
    outgoing: &Outgoing<'_>,
) -> Result<FirstBytes, Failure> {
    let uri = backend_uri(address, outgoing.path).map_err(Failure::Retryable)?;
    let mut request = Request::new(Full::new(outgoing.body.clone()));
    *request.method_mut() = Method::POST;
    *request.headers_mut() = outgoing.headers.clone();
    *request.uri_mut() = uri.clone();
    let response = shared
        .client
        .request(request)
        .await
        .map_err(|error| Failure::Retryable(format!("{uri}: {}", describe(&error))))?;
    if response.status().is_server_error() {
        return Err(Failure::Retryable(format!(
            "{uri} answered {}",
            response.status()
        )));
    }
    let (parts, mut body) = response.into_parts();
    let broke = |error: hyper::Error| {
        Failure::Retryable(format!("{uri} failed before the first byte: {error}"))
    };
    if parts.headers.contains_key(CONTENT_LENGTH) {
        let whole = body.collect().await.map_err(broke)?.to_bytes();
        return Ok(FirstBytes::Whole(parts, whole));
    }
    loop {
        match body.frame().await {
            None => return Ok(FirstBytes::Stream(parts, Bytes::new(), body)),
            Some(Err(error)) => return Err(broke(error)),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    if !data.is_empty() {
                        return Ok(FirstBytes::Stream(parts, data, body));
                    }
                }
            }
        }
    }
}

/// An error with its causes (the client's own message says only "client error").
fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}

fn relay(
    shared: &Shared,
    mut slot: Slot,
    first: FirstBytes,
    sent_at: Instant,
) -> Response<ProxyBody> {
    match first {
        FirstBytes::Whole(parts, body) => {
            let mut meter = ResponseMeter::default();
            meter.feed_whole(&body);
            slot.complete(Outcome::Ok, None, Some(&meter));
            respond(head_of(&parts, &slot), ProxyBody::whole(body))
        }
        FirstBytes::Stream(parts, first, upstream) => {
            let head = head_of(&parts, &slot);
            let idle = shared.settings.request_timeout;
            let relay = RelayBody::new(slot, first, upstream, sent_at, idle);
            respond(head, ProxyBody::Relay(Box::new(relay)))
        }
    }
}

/// The backend's status and end-to-end headers, plus which node and request id.
fn head_of(parts: &http::response::Parts, slot: &Slot) -> (http::StatusCode, HeaderMap) {
    let mut headers = end_to_end(&parts.headers);
    if let Ok(node) = HeaderValue::from_str(&slot.node_id) {
        headers.insert(NODE_HEADER, node);
    }
    if let Ok(id) = HeaderValue::from_str(&slot.request_id) {
        headers.insert(REQUEST_ID_HEADER, id);
    }
    (parts.status, headers)
}

fn respond(
    (status, headers): (http::StatusCode, HeaderMap),
    body: ProxyBody,
) -> Response<ProxyBody> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}
