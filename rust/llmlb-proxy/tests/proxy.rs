//! The proxy against in-process hyper backends on loopback: a whole body and a stream
//! pass through, a dead node is retried elsewhere, every request is completed once.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Frame;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use llmlb_core::{NodeSpec, Router, RouterConfig};
use llmlb_proxy::{Control, Listen, Proxy, ProxyEvent, ProxySettings};
use tokio::net::TcpListener;

const CHUNKS: [&str; 3] = [
    "data: {\"t\":1}\n\n",
    "data: {\"t\":2}\n\n",
    "data: [DONE]\n\n",
];

type BackendBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn answer(
    request: Request<hyper::body::Incoming>,
) -> Result<Response<BackendBody>, Infallible> {
    let body = request.into_body().collect().await.unwrap().to_bytes();
    let streaming = body.windows(14).any(|w| w == b"\"stream\":true}");
    if !streaming {
        let json = r#"{"choices":[],"usage":{"prompt_tokens":4,"completion_tokens":3}}"#;
        return Ok(Response::new(Full::new(Bytes::from(json)).boxed()));
    }
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
    tokio::spawn(async move {
        for chunk in CHUNKS {
            let _ = sender.send(Ok(Frame::data(Bytes::from(chunk)))).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let mut response = Response::new(ChannelBody(receiver).boxed());
    response
        .headers_mut()
        .insert("content-type", "text/event-stream".parse().unwrap());
    Ok(response)
}

/// A streamed body fed through a channel (no content-length: sent chunked).
struct ChannelBody(tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, Infallible>>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.get_mut().0.poll_recv(cx)
    }
}

async fn backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(
                http1::Builder::new().serve_connection(TokioIo::new(stream), service_fn(answer)),
            );
        }
    });
    addr
}

fn dead_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", listener.local_addr().unwrap())
}

struct Fixture {
    router: Arc<Router>,
    proxy: Proxy,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

impl Fixture {
    fn new(runtime: &tokio::runtime::Runtime, dead_nodes: usize) -> Self {
        let live = runtime.block_on(backend());
        let router = Arc::new(Router::new(RouterConfig::default()).unwrap());
        router
            .upsert_node(NodeSpec::new("live", &format!("http://{live}")))
            .unwrap();
        for i in 0..dead_nodes {
            router
                .upsert_node(NodeSpec::new(&format!("dead{i}"), &dead_address()))
                .unwrap();
        }
        let settings = ProxySettings {
            backoff_base: Duration::from_millis(1),
            backoff_cap: Duration::from_millis(2),
            max_attempts: 4,
            worker_threads: 2,
            ..ProxySettings::default()
        };
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let listen = Listen {
            http: Some(addr),
            ext_proc: None,
        };
        let proxy =
            Proxy::start(router.clone(), settings, None, Control::default(), listen).unwrap();
        let client = Client::builder(TokioExecutor::new()).build_http();
        Fixture {
            router,
            proxy,
            client,
        }
    }

    async fn post(&self, path: &str, body: &str) -> (u16, String, Option<String>) {
        let uri = format!("http://{}{path}", self.proxy.bound.http.unwrap());
        let request = Request::post(uri)
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap();
        let response = self.client.request(request).await.unwrap();
        let status = response.status().as_u16();
        let node = response
            .headers()
            .get("x-llmlb-node")
            .map(|v| v.to_str().unwrap().to_owned());
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(bytes.to_vec()).unwrap(), node)
    }

    fn completions(&self) -> Vec<(String, &'static str)> {
        self.proxy
            .events()
            .take()
            .into_iter()
            .filter_map(|event| match event {
                ProxyEvent::Completed { completion, .. } => {
                    Some((completion.node_id.to_string(), completion.outcome.as_str()))
                }
                _ => None,
            })
            .collect()
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn whole_and_streamed_responses_pass_through_and_complete_once() {
    let runtime = runtime();
    let fixture = Fixture::new(&runtime, 0);
    runtime.block_on(async {
        let (status, body, node) = fixture
            .post(
                "/v1/completions",
                r#"{"model":"m","prompt":"hello","max_tokens":3}"#,
            )
            .await;
        assert_eq!((status, node.as_deref()), (200, Some("live")));
        assert!(body.contains("completion_tokens"));
        let (status, body, _) = fixture
            .post(
                "/v1/chat/completions",
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}"#,
            )
            .await;
        assert_eq!(status, 200);
        assert_eq!(body, CHUNKS.concat());
    });
    assert_eq!(fixture.router.in_flight_total(), 0);
    assert_eq!(
        fixture.completions(),
        vec![("live".into(), "ok"), ("live".into(), "ok")]
    );
    let stats = fixture.router.node_statuses();
    assert_eq!(stats[0].routed_total, 2);
}

#[test]
fn dead_nodes_are_retried_elsewhere_and_bad_input_is_a_400() {
    let runtime = runtime();
    let fixture = Fixture::new(&runtime, 2);
    runtime.block_on(async {
        for i in 0..4 {
            let body = format!(r#"{{"model":"m","prompt":"question {i}"}}"#);
            let (status, _, node) = fixture.post("/v1/completions", &body).await;
            assert_eq!((status, node.as_deref()), (200, Some("live")));
        }
        let (status, body, _) = fixture
            .post("/v1/completions", r#"{"model":"m","prompt":7}"#)
            .await;
        assert_eq!(status, 400);
        assert!(body.contains("invalid_prompt"), "{body}");
    });
    let completions = fixture.completions();
    let live: Vec<_> = completions
        .iter()
        .filter(|(node, _)| node == "live")
        .collect();
    assert_eq!(live.len(), 4);
    assert!(live.iter().all(|(_, outcome)| *outcome == "ok"));
    assert!(completions
        .iter()
        .filter(|(node, _)| node != "live")
        .all(|(_, o)| *o == "error"));
    assert_eq!(fixture.router.in_flight_total(), 0);
}
