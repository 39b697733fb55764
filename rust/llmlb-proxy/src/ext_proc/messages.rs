//! The ext_proc messages the picker reads and writes: request metadata and headers in,
//! header mutations, streamed bodies, dynamic metadata and immediate answers out.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3::{
    header_value_option::HeaderAppendAction, HeaderMap, HeaderValue, HeaderValueOption, Metadata,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    body_mutation::Mutation, processing_response::Response, BodyMutation, BodyResponse,
    CommonResponse, HeaderMutation, HeadersResponse, ImmediateResponse, ProcessingResponse,
    StreamedBodyResponse, TrailersResponse,
};
use envoy_types::pb::google::protobuf::{value::Kind, ListValue, Struct, Value};

use crate::error::ProxyError;

/// The header (and `envoy.lb` metadata key) carrying the picked `ip:port`, as the
/// Gateway API Inference Extension's endpoint picker protocol names it.
pub const DESTINATION_HEADER: &str = "x-gateway-destination-endpoint";
pub const METADATA_NAMESPACE: &str = "envoy.lb";
/// Where a gateway names the endpoints a request may go to (the protocol's subset hint).
pub const SUBSET_NAMESPACE: &str = "envoy.lb.subset_hint";
pub const SUBSET_KEY: &str = "x-gateway-destination-endpoint-subset";
pub const REQUEST_ID_HEADER: &str = "x-llmlb-request-id";
pub const NODE_HEADER: &str = "x-llmlb-node";
/// Largest body chunk sent back in one message (Envoy caps a streamed chunk near 64 KiB).
pub const MAX_STREAMED_CHUNK: usize = 62_000;

/// `http://10.0.0.5:8000/v1` -> `10.0.0.5:8000` (the form the header carries).
pub fn destination(address: &str) -> &str {
    let rest = address.split_once("://").map_or(address, |(_, rest)| rest);
    rest.split('/').next().unwrap_or(rest)
}

/// Envoy sends `raw_value` (bytes) in current versions and `value` in older ones.
pub fn header_value<'a>(headers: Option<&'a HeaderMap>, name: &str) -> Option<&'a [u8]> {
    headers?
        .headers
        .iter()
        .find(|h| h.key.eq_ignore_ascii_case(name))
        .map(|h| {
            if h.raw_value.is_empty() {
                h.value.as_bytes()
            } else {
                &h.raw_value[..]
            }
        })
}

/// The endpoints the gateway allows (`None`: no hint, any node).
pub fn endpoint_subset(metadata: Option<&Metadata>) -> Option<Vec<String>> {
    let hint = metadata?.filter_metadata.get(SUBSET_NAMESPACE)?;
    let Some(Kind::ListValue(list)) = hint.fields.get(SUBSET_KEY)?.kind.as_ref() else {
        return Some(Vec::new());
    };
    Some(
        list.values
            .iter()
            .filter_map(|value| match &value.kind {
                Some(Kind::StringValue(endpoint)) => Some(endpoint.clone()),
                _ => None,
            })
            .collect(),
    )
}

pub fn set_header(key: &str, value: &[u8]) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            raw_value: value.to_vec(),
            ..Default::default()
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

fn string_value(text: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(text.to_owned())),
    }
}

/// `{"envoy.lb": {"x-gateway-destination-endpoint": endpoint}}`.
pub fn destination_metadata(endpoint: &str) -> Struct {
    let inner = Struct {
        fields: HashMap::from([(DESTINATION_HEADER.to_owned(), string_value(endpoint))]),
    };
    let outer = Value {
        kind: Some(Kind::StructValue(inner)),
    };
    Struct {
        fields: HashMap::from([(METADATA_NAMESPACE.to_owned(), outer)]),
    }
}

/// A subset hint as Envoy would send it (tests build requests with it).
pub fn subset_metadata(endpoints: &[&str]) -> Metadata {
    let list = Value {
        kind: Some(Kind::ListValue(ListValue {
            values: endpoints.iter().map(|e| string_value(e)).collect(),
        })),
    };
    let hint = Struct {
        fields: HashMap::from([(SUBSET_KEY.to_owned(), list)]),
    };
    Metadata {
        filter_metadata: HashMap::from([(SUBSET_NAMESPACE.to_owned(), hint)]),
        ..Default::default()
    }
}

pub fn respond(response: Response) -> ProcessingResponse {
    ProcessingResponse {
        response: Some(response),
        ..Default::default()
    }
}

pub fn request_headers_done(common: Option<CommonResponse>) -> ProcessingResponse {
    respond(Response::RequestHeaders(HeadersResponse {
        response: common,
    }))
}

pub fn request_body_done(common: Option<CommonResponse>) -> ProcessingResponse {
    respond(Response::RequestBody(BodyResponse { response: common }))
}

pub fn response_headers_done() -> ProcessingResponse {
    respond(Response::ResponseHeaders(HeadersResponse::default()))
}

pub fn request_trailers_done() -> ProcessingResponse {
    respond(Response::RequestTrailers(TrailersResponse::default()))
}

pub fn response_trailers_done() -> ProcessingResponse {
    respond(Response::ResponseTrailers(TrailersResponse::default()))
}

pub fn response_body_done(echo: Option<(&[u8], bool)>) -> ProcessingResponse {
    respond(Response::ResponseBody(BodyResponse {
        response: echo.map(|(body, end)| streamed(body, end)),
    }))
}

/// A body given back in FULL_DUPLEX_STREAMED mode, where Envoy forwards only what the
/// processor returns.
fn streamed(body: &[u8], end_of_stream: bool) -> CommonResponse {
    CommonResponse {
        body_mutation: Some(BodyMutation {
            mutation: Some(Mutation::StreamedResponse(StreamedBodyResponse {
                body: body.to_vec(),
                end_of_stream,
                ..Default::default()
            })),
        }),
        ..Default::default()
    }
}

/// The request body given back in chunks Envoy accepts; the last ends the stream unless
/// trailers follow.
pub fn request_body_streamed(body: &[u8], end_of_stream: bool) -> Vec<ProcessingResponse> {
    if body.is_empty() {
        return vec![request_body_done(Some(streamed(body, end_of_stream)))];
    }
    let count = body.len().div_ceil(MAX_STREAMED_CHUNK);
    body.chunks(MAX_STREAMED_CHUNK)
        .enumerate()
        .map(|(i, chunk)| {
            let last = i + 1 == count;
            request_body_done(Some(streamed(chunk, last && end_of_stream)))
        })
        .collect()
}

/// The picker's answer itself (an OpenAI-style error), instead of the upstream's.
pub fn immediate(error: &ProxyError) -> ProcessingResponse {
    let mut headers = vec![set_header("content-type", b"application/json")];
    if let Some(seconds) = error.retry_after_s {
        headers.push(set_header("retry-after", seconds.to_string().as_bytes()));
    }
    respond(Response::ImmediateResponse(ImmediateResponse {
        status: Some(HttpStatus {
            code: i32::from(error.status.as_u16()),
        }),
        headers: Some(HeaderMutation {
            set_headers: headers,
            ..Default::default()
        }),
        body: error.body().to_vec(),
        details: error.code.to_owned(),
        ..Default::default()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destination_is_host_and_port() {
        assert_eq!(destination("http://10.0.0.5:8000/"), "10.0.0.5:8000");
        assert_eq!(destination("http://10.0.0.5:8000/v1"), "10.0.0.5:8000");
        assert_eq!(destination("10.0.0.5:8000"), "10.0.0.5:8000");
    }

    #[test]
    fn long_bodies_go_back_in_chunks_and_only_the_last_may_end_the_stream() {
        let body = vec![b'x'; MAX_STREAMED_CHUNK * 2 + 5];
        let ends: Vec<(usize, bool)> = request_body_streamed(&body, true)
            .into_iter()
            .map(|message| match message.response {
                Some(Response::RequestBody(BodyResponse {
                    response: Some(common),
                })) => match common.body_mutation.and_then(|m| m.mutation) {
                    Some(Mutation::StreamedResponse(s)) => (s.body.len(), s.end_of_stream),
                    other => panic!("not streamed: {other:?}"),
                },
                other => panic!("not a body response: {other:?}"),
            })
            .collect();
        assert_eq!(
            ends,
            [
                (MAX_STREAMED_CHUNK, false),
                (MAX_STREAMED_CHUNK, false),
                (5, true)
            ]
        );
        let with_trailers = request_body_streamed(b"{}", false);
        assert_eq!(with_trailers.len(), 1);
    }

    #[test]
    fn subset_hint_is_read_from_filter_metadata() {
        let metadata = subset_metadata(&["10.0.0.1:8000", "10.0.0.2:8000"]);
        assert_eq!(
            endpoint_subset(Some(&metadata)),
            Some(vec!["10.0.0.1:8000".to_owned(), "10.0.0.2:8000".to_owned()])
        );
        assert_eq!(endpoint_subset(None), None);
        assert_eq!(endpoint_subset(Some(&Metadata::default())), None);
    }
}
