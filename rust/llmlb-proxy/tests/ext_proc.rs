//! The ext_proc picker over real gRPC on loopback (tonic's client playing Envoy): a
//! FULL_DUPLEX_STREAMED exchange from headers to the response's end.

use std::net::SocketAddr;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    body_mutation::Mutation, processing_request::Request, processing_response::Response, HttpBody,
    HttpHeaders, ProcessingRequest, ProcessingResponse, ProtocolConfiguration,
};
use llmlb_core::{NodeSpec, Router, RouterConfig};
use llmlb_proxy::{Control, Listen, Proxy, ProxyEvent, ProxySettings};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

fn headers(pairs: &[(&str, &str)], end_of_stream: bool) -> HttpHeaders {
    let headers = pairs
        .iter()
        .map(|(key, value)| HeaderValue {
            key: (*key).to_owned(),
            raw_value: value.as_bytes().to_vec(),
            ..Default::default()
        })
        .collect();
    HttpHeaders {
        headers: Some(HeaderMap { headers }),
        end_of_stream,
        ..Default::default()
    }
}

fn body(bytes: &[u8], end_of_stream: bool) -> HttpBody {
    HttpBody {
        body: bytes.to_vec(),
        end_of_stream,
        ..Default::default()
    }
}

fn message(request: Request) -> ProcessingRequest {
    ProcessingRequest {
        request: Some(request),
        ..Default::default()
    }
}

fn streamed(response: &ProcessingResponse) -> (Vec<u8>, bool) {
    let common = match &response.response {
        Some(Response::RequestBody(b) | Response::ResponseBody(b)) => b.response.clone(),
        other => panic!("not a body response: {other:?}"),
    };
    match common.and_then(|c| c.body_mutation?.mutation) {
        Some(Mutation::StreamedResponse(s)) => (s.body, s.end_of_stream),
        other => panic!("not streamed: {other:?}"),
    }
}

#[test]
fn full_duplex_exchange_routes_gives_the_body_back_and_completes_once() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let router = Arc::new(Router::new(RouterConfig::default()).unwrap());
    router
        .upsert_node(NodeSpec::new("a", "http://10.0.0.1:8000"))
        .unwrap();
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let listen = Listen {
        http: None,
        ext_proc: Some(addr),
    };
    let settings = ProxySettings::default();
    let mut proxy = Proxy::start(router.clone(), settings, None, Control::default(), listen)
        .expect("the picker starts");
    let port = proxy.bound.ext_proc.unwrap().port();
    let raw = br#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;

    runtime.block_on(async {
        let mut client = ExternalProcessorClient::connect(format!("http://127.0.0.1:{port}"))
            .await
            .unwrap();
        let (to_picker, outbox) = mpsc::channel(8);
        let mut answers = client
            .process(ReceiverStream::new(outbox))
            .await
            .unwrap()
            .into_inner();
        let mut first = message(Request::RequestHeaders(headers(
            &[(":method", "POST"), (":path", "/v1/chat/completions")],
            false,
        )));
        first.protocol_config = Some(ProtocolConfiguration {
            request_body_mode: BodySendMode::FullDuplexStreamed as i32,
            response_body_mode: BodySendMode::FullDuplexStreamed as i32,
            ..Default::default()
        });
        to_picker.send(first).await.unwrap();
        to_picker
            .send(message(Request::RequestBody(body(raw, false))))
            .await
            .unwrap();
        to_picker
            .send(message(Request::RequestBody(body(b"", true))))
            .await
            .unwrap();

        let routed = answers.next().await.unwrap().unwrap();
        let Some(Response::RequestHeaders(picked)) = &routed.response else {
            panic!("expected the headers' answer first: {routed:?}");
        };
        let set: Vec<(String, Vec<u8>)> = picked
            .response
            .clone()
            .unwrap()
            .header_mutation
            .unwrap()
            .set_headers
            .into_iter()
            .map(|h| h.header.unwrap())
            .map(|h| (h.key, h.raw_value))
            .collect();
        assert!(set.contains(&(
            "x-gateway-destination-endpoint".into(),
            b"10.0.0.1:8000".to_vec()
        )));
        assert!(routed.dynamic_metadata.is_some());
        let given_back = streamed(&answers.next().await.unwrap().unwrap());
        assert_eq!(given_back, (raw.to_vec(), true));
        assert_eq!(router.in_flight_total(), 1);

        to_picker
            .send(message(Request::ResponseHeaders(headers(
                &[(":status", "200"), ("content-type", "text/event-stream")],
                false,
            ))))
            .await
            .unwrap();
        answers.next().await.unwrap().unwrap();
        let chunk = b"data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\n";
        to_picker
            .send(message(Request::ResponseBody(body(chunk, true))))
            .await
            .unwrap();
        let echoed = streamed(&answers.next().await.unwrap().unwrap());
        assert_eq!(echoed, (chunk.to_vec(), true));
        drop(to_picker);
        assert!(answers.next().await.is_none());
    });
    assert_eq!(router.in_flight_total(), 0);
    proxy.stop();
    let completed = proxy
        .events()
        .take()
        .into_iter()
        .filter(|e| matches!(e, ProxyEvent::Completed { .. }))
        .count();
    assert_eq!(completed, 1);
}
