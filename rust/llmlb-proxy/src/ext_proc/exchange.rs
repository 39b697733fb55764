//! One HTTP request and its response as one ext_proc stream shows them: the picker's
//! state machine. It routes when the request body is complete (or at the headers when
//! there is none), answers in the order the body mode requires, meters the response and
//! completes the request exactly once: at the response's end, or when the stream ends
//! early (no response status: the upstream never answered, an error).

use std::sync::Arc;
use std::time::Instant;

use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    processing_request::Request, CommonResponse, HeaderMutation, HttpBody, HttpHeaders,
    ProcessingRequest, ProcessingResponse,
};
use llmlb_core::Outcome;
use tonic::Status;

use super::messages::{self, *};
use crate::error::ProxyError;
use crate::events::Transport;
use crate::forward::SESSION_HEADER;
use crate::metering::ResponseMeter;
use crate::routing_key::{routing_key, RoutingKey, CHAT_PATH};
use crate::shared::{Client, Shared, Slot};

/// Non-streamed response bodies are kept (for their `usage` block) up to this size.
const MAX_KEPT_RESPONSE: usize = 1 << 20;

/// How Envoy sends bodies on this stream (its `protocol_config`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Modes {
    /// FULL_DUPLEX_STREAMED request body: nothing is answered until the body is whole,
    /// then the headers' answer (with the destination) and the body given back.
    request_duplex: bool,
    /// FULL_DUPLEX_STREAMED response body: every chunk is given back.
    response_duplex: bool,
}

impl Modes {
    /// Envoy names the modes in the first message; one without (older Envoy) is taken
    /// to be the classic BUFFERED request, STREAMED response setup.
    fn of(message: &ProcessingRequest) -> Result<Modes, Status> {
        let Some(config) = message.protocol_config else {
            return Ok(Modes {
                request_duplex: false,
                response_duplex: false,
            });
        };
        let request = BodySendMode::try_from(config.request_body_mode).ok();
        let response = BodySendMode::try_from(config.response_body_mode).ok();
        let request_duplex = match request {
            Some(BodySendMode::FullDuplexStreamed) => true,
            Some(BodySendMode::Buffered | BodySendMode::None) => false,
            other => {
                return Err(Status::invalid_argument(format!(
                    "request_body_mode {other:?} is not supported: use BUFFERED or \
                     FULL_DUPLEX_STREAMED"
                )))
            }
        };
        Ok(Modes {
            request_duplex,
            response_duplex: response == Some(BodySendMode::FullDuplexStreamed),
        })
    }
}

/// What routing gave the request: the destination to set, or none (fail-open: Envoy's
/// own load balancing takes it).
type Picked = Option<(CommonResponse, String)>;

pub struct Exchange {
    shared: Arc<Shared>,
    modes: Option<Modes>,
    path: String,
    session_id: String,
    subset: Option<Vec<String>>,
    body: Vec<u8>,
    routed: bool,
    slot: Option<Slot>,
    routed_at: Instant,
    status: u16,
    streaming: bool,
    meter: ResponseMeter,
    first_byte_at: Option<Instant>,
    kept: Vec<u8>,
}

impl Exchange {
    pub fn new(shared: Arc<Shared>) -> Self {
        Exchange {
            shared,
            modes: None,
            path: String::new(),
            session_id: String::new(),
            subset: None,
            body: Vec::new(),
            routed: false,
            slot: None,
            routed_at: Instant::now(),
            status: 0,
            streaming: false,
            meter: ResponseMeter::default(),
            first_byte_at: None,
            kept: Vec::new(),
        }
    }

    /// The answers to one message, in the order Envoy expects them (none while a
    /// full-duplex request body is still arriving).
    pub async fn handle(
        &mut self,
        message: ProcessingRequest,
    ) -> Result<Vec<ProcessingResponse>, Status> {
        let modes = match self.modes {
            Some(modes) => modes,
            None => *self.modes.insert(Modes::of(&message)?),
        };
        if let Some(subset) = messages::endpoint_subset(message.metadata_context.as_ref()) {
            self.subset = Some(subset);
        }
        let Some(request) = message.request else {
            return Ok(Vec::new());
        };
        Ok(match request {
            Request::RequestHeaders(headers) => self.request_headers(headers, modes).await,
            Request::RequestBody(body) => self.request_body(body, modes).await,
            Request::RequestTrailers(_) => self.request_trailers(modes).await,
            Request::ResponseHeaders(headers) => vec![self.response_headers(&headers)],
            Request::ResponseBody(body) => vec![self.response_body(&body, modes)],
            Request::ResponseTrailers(_) => {
                self.finish();
                vec![messages::response_trailers_done()]
            }
        })
    }

    async fn request_headers(
        &mut self,
        headers: HttpHeaders,
        modes: Modes,
    ) -> Vec<ProcessingResponse> {
        let map = headers.headers.as_ref();
        let text = |name| header_value(map, name).map(String::from_utf8_lossy);
        self.path = text(":path")
            .map(|path| path.split('?').next().unwrap_or_default().to_owned())
            .unwrap_or_default();
        self.session_id = text(SESSION_HEADER)
            .map(|s| s.into_owned())
            .unwrap_or_default();
        let limit = self.shared.settings.max_body_bytes;
        let length = text("content-length").and_then(|l| l.parse::<u64>().ok());
        if length.is_some_and(|length| length > limit as u64) {
            return vec![messages::immediate(&ProxyError::body_too_large(limit))];
        }
        if headers.end_of_stream {
            // No body (a GET): routed without a prompt.
            return match self.pick(None) {
                Ok(picked) => vec![carrying(picked, messages::request_headers_done)],
                Err(error) => vec![messages::immediate(&error)],
            };
        }
        if modes.request_duplex {
            Vec::new()
        } else {
            vec![messages::request_headers_done(None)]
        }
    }

    async fn request_body(&mut self, body: HttpBody, modes: Modes) -> Vec<ProcessingResponse> {
        self.body.extend_from_slice(&body.body);
        let limit = self.shared.settings.max_body_bytes;
        if self.body.len() > limit {
            return vec![messages::immediate(&ProxyError::body_too_large(limit))];
        }
        match (body.end_of_stream, modes.request_duplex) {
            (true, _) => self.route_body(modes, true).await,
            (false, true) => Vec::new(),
            (false, false) => vec![messages::request_body_done(None)],
        }
    }

    /// Trailers end a full-duplex request whose body did not.
    async fn request_trailers(&mut self, modes: Modes) -> Vec<ProcessingResponse> {
        let mut answers = Vec::new();
        if modes.request_duplex && !self.routed {
            answers = self.route_body(modes, false).await;
            if is_immediate(&answers) {
                return answers;
            }
        }
        answers.push(messages::request_trailers_done());
        answers
    }

    async fn route_body(&mut self, modes: Modes, end_of_stream: bool) -> Vec<ProcessingResponse> {
        let key = match self.routing_key() {
            Ok(key) => self.shared.engine_tokens(key).await,
            Err(error) => return vec![messages::immediate(&error)],
        };
        let picked = match self.pick(Some(key)) {
            Ok(picked) => picked,
            Err(error) => return vec![messages::immediate(&error)],
        };
        if !modes.request_duplex {
            return vec![carrying(picked, messages::request_body_done)];
        }
        // Envoy forwards the body given back, so it says how long that is.
        let length = self.body.len().to_string();
        let picked = picked.map(|(mut common, endpoint)| {
            if let Some(mutation) = common.header_mutation.as_mut() {
                let header = set_header("content-length", length.as_bytes());
                mutation.set_headers.push(header);
            }
            (common, endpoint)
        });
        let headers = carrying(picked, messages::request_headers_done);
        let mut answers = vec![headers];
        answers.extend(messages::request_body_streamed(&self.body, end_of_stream));
        answers
    }

    fn routing_key(&self) -> Result<RoutingKey, ProxyError> {
        let path = if self.path.ends_with("/chat/completions") {
            CHAT_PATH
        } else {
            &self.path
        };
        routing_key(path, &self.body)
    }

    /// Routes the request; `Err` is what the immediate answer refusing it says.
    fn pick(&mut self, key: Option<RoutingKey>) -> Result<Picked, ProxyError> {
        self.routed = true;
        let key = key.unwrap_or_default();
        let outside = self.nodes_outside_subset()?;
        let client = Client {
            session_id: &self.session_id,
            api_key: None,
            transport: Transport::ExtProc,
        };
        let slot = match self.shared.route_within(&key, &client, &[], &outside) {
            Ok(slot) => slot,
            Err(error) => return self.refused(error),
        };
        let endpoint = messages::destination(&slot.address).to_owned();
        let common = CommonResponse {
            header_mutation: Some(HeaderMutation {
                set_headers: vec![
                    set_header(DESTINATION_HEADER, endpoint.as_bytes()),
                    set_header(REQUEST_ID_HEADER, slot.request_id.as_bytes()),
                    set_header(NODE_HEADER, slot.node_id.as_bytes()),
                ],
                ..Default::default()
            }),
            clear_route_cache: true,
            ..Default::default()
        };
        self.slot = Some(slot);
        self.routed_at = Instant::now();
        Ok(Some((common, endpoint)))
    }

    /// With no node able to take the request, fail-open lets Envoy pick instead (not
    /// while draining: this replica is going away, and says so).
    fn refused(&self, error: ProxyError) -> Result<Picked, ProxyError> {
        let control = self.shared.control.load();
        let no_node = error.code == "no_backend_available" && !control.draining;
        if no_node && control.ext_proc_fail_open && self.subset.is_none() {
            return Ok(None);
        }
        Err(error)
    }

    /// The ids of the nodes the gateway's subset hint leaves out (none without a hint).
    fn nodes_outside_subset(&self) -> Result<Vec<Arc<str>>, ProxyError> {
        let Some(subset) = &self.subset else {
            return Ok(Vec::new());
        };
        if subset.is_empty() {
            self.shared.refuse(Transport::ExtProc, "no_available_node");
            return Err(ProxyError::no_backend(
                "The gateway's endpoint subset for this request is empty.",
            ));
        }
        Ok(self
            .shared
            .router
            .node_statuses()
            .into_iter()
            .filter(|node| !subset.iter().any(|e| e == destination(&node.spec.address)))
            .map(|node| node.spec.id)
            .collect())
    }

    fn response_headers(&mut self, headers: &HttpHeaders) -> ProcessingResponse {
        let map = headers.headers.as_ref();
        self.status = header_value(map, ":status")
            .and_then(|s| std::str::from_utf8(s).ok()?.parse().ok())
            .unwrap_or(0);
        self.streaming =
            header_value(map, "content-type").is_some_and(|t| t.starts_with(b"text/event-stream"));
        if headers.end_of_stream {
            self.finish();
        }
        messages::response_headers_done()
    }

    fn response_body(&mut self, body: &HttpBody, modes: Modes) -> ProcessingResponse {
        if self.streaming {
            if self.first_byte_at.is_none() && !body.body.is_empty() {
                self.first_byte_at = Some(Instant::now());
                if let Some(slot) = &self.slot {
                    slot.first_token();
                }
            }
            self.meter.feed_stream(&body.body);
        } else if self.kept.len() + body.body.len() <= MAX_KEPT_RESPONSE {
            self.kept.extend_from_slice(&body.body);
        }
        if body.end_of_stream {
            self.finish();
        }
        let echo = modes
            .response_duplex
            .then_some((&body.body[..], body.end_of_stream));
        messages::response_body_done(echo)
    }

    /// Completes the request from what the response showed (once; later calls do
    /// nothing). Also called when the stream ends early.
    pub fn finish(&mut self) {
        let Some(mut slot) = self.slot.take() else {
            return;
        };
        if self.streaming {
            self.meter.finish_stream();
        } else {
            self.meter.feed_whole(&self.kept);
        }
        let ttft_s = self
            .first_byte_at
            .filter(|_| self.streaming)
            .map(|at| at.duration_since(self.routed_at).as_secs_f64());
        slot.complete(outcome_of(self.status), ttft_s, Some(&self.meter));
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The answer `respond` builds, carrying the destination (header mutation and
/// `envoy.lb` metadata) when routing picked one.
fn carrying(
    picked: Picked,
    respond: fn(Option<CommonResponse>) -> ProcessingResponse,
) -> ProcessingResponse {
    let (common, endpoint) = picked.unzip();
    let mut response = respond(common);
    response.dynamic_metadata = endpoint.map(|e| messages::destination_metadata(&e));
    response
}

fn is_immediate(answers: &[ProcessingResponse]) -> bool {
    use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response;
    answers
        .iter()
        .any(|a| matches!(a.response, Some(Response::ImmediateResponse(_))))
}

/// The request's outcome from its response status; 0: the stream ended before any
/// response header (the upstream never answered).
pub fn outcome_of(status: u16) -> Outcome {
    match status {
        408 | 504 => Outcome::Timeout,
        0 | 500.. => Outcome::Error,
        _ => Outcome::Ok,
    }
}
