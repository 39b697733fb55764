//! The HTTP/1.1 front: accept loop (TCP_NODELAY), graceful stop, and the endpoints
//! `/v1/completions`, `/v1/chat/completions`, `/v1/models` and `/health`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{
    HeaderValue, AUTHORIZATION, CONNECTION, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE,
};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admission::Permit;
use crate::catalog::ModelCatalog;
use crate::error::ProxyError;
use crate::events::Transport;
use crate::forward::{forward, Outgoing, SESSION_HEADER};
use crate::relay::ProxyBody;
use crate::routing_key::{routing_key, CHAT_PATH, COMPLETIONS_PATH};
use crate::settings::{KeyHolder, Unauthorized};
use crate::shared::{Client, Shared};

/// How long stopping waits for open responses before cutting them.
pub const STOP_GRACE: Duration = Duration::from_secs(1);

pub async fn serve(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let shared = shared.clone();
                    let service = service_fn(move |request| handle(shared.clone(), peer, request));
                    let connection = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service);
                    let connection = graceful.watch(connection);
                    tokio::spawn(async move {
                        let _ = connection.await;
                    });
                }
                // Out of file descriptors and the like: wait a little instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            _ = stop.changed() => break,
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(STOP_GRACE, graceful.shutdown()).await;
}

#[derive(Clone, Copy)]
enum Endpoint {
    Completion,
    Models,
    Health,
    /// A completion path with another method than POST.
    WrongMethod,
    Unknown,
}

impl Endpoint {
    fn of(method: &Method, path: &str) -> Self {
        match (method, path) {
            (&Method::POST, CHAT_PATH | COMPLETIONS_PATH) => Endpoint::Completion,
            (_, CHAT_PATH | COMPLETIONS_PATH) => Endpoint::WrongMethod,
            (&Method::GET, "/v1/models") => Endpoint::Models,
            (&Method::GET, "/health") => Endpoint::Health,
            _ => Endpoint::Unknown,
        }
    }
}

async fn handle(
    shared: Arc<Shared>,
    peer: SocketAddr,
    request: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let endpoint = Endpoint::of(request.method(), request.uri().path());
    let api_key = match endpoint {
        Endpoint::Health => Ok(None), // probes carry no key
        _ => authorize(&shared, &request),
    };
    let answer = match (endpoint, api_key) {
        (_, Err(refused)) => {
            // Read what the client sends, so that its connection stays usable.
            let _ = read_body(request.into_body(), shared.settings.max_body_bytes).await;
            Err(refused)
        }
        (Endpoint::Completion, Ok(api_key)) => completion(&shared, peer, api_key, request).await,
        (Endpoint::Models, _) => models(&shared).await,
        (Endpoint::Health, _) => Ok(health(&shared)),
        (Endpoint::WrongMethod, _) => Err(ProxyError::method_not_allowed(
            request.method().as_str(),
            request.uri().path(),
        )),
        (Endpoint::Unknown, _) => Err(ProxyError::unknown_endpoint(
            request.method().as_str(),
            request.uri().path(),
        )),
    };
    Ok(answer.unwrap_or_else(|error| {
        let mut response = json_response(error.status, error.body());
        if error.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if error.status == StatusCode::PAYLOAD_TOO_LARGE {
            // The rest of the body is not read: the connection cannot carry another request.
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        if let Some(seconds) = error.retry_after_s {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }))
}

/// The client's API key holder (None when the proxy is open), or a 401.
fn authorize(
    shared: &Shared,
    request: &Request<Incoming>,
) -> Result<Option<KeyHolder>, ProxyError> {
    let authorization = request.headers().get(AUTHORIZATION).map(|v| v.as_bytes());
    shared
        .control
        .load()
        .authorize(authorization)
        .map_err(|_: Unauthorized| {
            shared.refuse(Transport::Proxy, "unauthorized");
            ProxyError::invalid_api_key()
        })
}

/// A place under the admission cap, after the key's rate limit.
async fn admit(shared: &Shared, holder: Option<&KeyHolder>) -> Result<Permit, ProxyError> {
    let admitted = match holder.and_then(|h| h.rate.map(|rate| (&h.name, rate))) {
        Some((name, rate)) => shared.admission.rate_limit(name, rate),
        None => Ok(()),
    };
    let limits = shared.control.load().admission;
    let admitted = match admitted {
        Ok(()) => shared.admission.admit(limits).await,
        Err(shed) => Err(shed),
    };
    admitted.map_err(|(kind, error)| {
        shared.refuse(Transport::Proxy, kind);
        error
    })
}

async fn completion(
    shared: &Arc<Shared>,
    peer: SocketAddr,
    holder: Option<KeyHolder>,
    request: Request<Incoming>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let (parts, body) = request.into_parts();
    let raw = read_body(body, shared.settings.max_body_bytes).await?;
    // After the body is in: a refused client's connection stays usable.
    let permit = admit(shared, holder.as_ref()).await?;
    let api_key = holder.map(|h| h.name);
    let path = parts.uri.path();
    let key = routing_key(path, &raw)?;
    if ModelCatalog::knows(shared, &key.model).await == Some(false) {
        shared.refuse(Transport::Proxy, "unknown_model");
        return Err(ProxyError::unknown_model(&key.model));
    }
    let key = shared.engine_tokens(key).await;
    let session_id = parts
        .headers
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let mut headers = crate::upstream::end_to_end(&parts.headers);
    crate::upstream::append_forwarded_for(&mut headers, peer.ip());
    if api_key.is_some() {
        headers.remove(AUTHORIZATION); // the router's credential, not the backend's
    }
    let outgoing = Outgoing {
        path,
        headers,
        client: Client {
            session_id,
            api_key,
            transport: Transport::Proxy,
        },
        body: raw,
    };
    let mut response = forward(shared, &outgoing, &key).await?;
    if let ProxyBody::Relay(relay) = response.body_mut() {
        relay.permit = Some(permit); // a stream holds its place until it ends
    }
    Ok(response)
}

async fn read_body(body: Incoming, limit: usize) -> Result<Bytes, ProxyError> {
    use http_body::Body as _;
    if body.size_hint().lower() > limit as u64 {
        return Err(ProxyError::body_too_large(limit));
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => {
            Err(ProxyError::body_too_large(limit))
        }
        Err(error) => Err(ProxyError::invalid_request(
            format!("Could not read the request body: {error}"),
            "invalid_body",
        )),
    }
}

async fn models(shared: &Arc<Shared>) -> Result<Response<ProxyBody>, ProxyError> {
    let (models, answered) = ModelCatalog::models(shared).await;
    if answered == 0 && models.is_empty() {
        return Err(ProxyError::no_backend("No backend answered /v1/models."));
    }
    let document = serde_json::json!({"object": "list", "data": models});
    Ok(json_response(
        StatusCode::OK,
        Bytes::from(document.to_string()),
    ))
}

fn health(shared: &Shared) -> Response<ProxyBody> {
    let in_flight = shared.router.in_flight_total();
    if shared.control.load().warming_up {
        let document = serde_json::json!({"status": "warming_up", "in_flight": in_flight});
        return json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            Bytes::from(document.to_string()),
        );
    }
    let document = serde_json::json!({"status": "ok", "in_flight": in_flight});
    json_response(StatusCode::OK, Bytes::from(document.to_string()))
}

fn json_response(status: StatusCode, body: Bytes) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::whole(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
