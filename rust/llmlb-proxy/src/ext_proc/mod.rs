//! Envoy's `envoy.service.ext_proc.v3.ExternalProcessor` as the Gateway API Inference
//! Extension's endpoint picker (its EPP protocol: the picked `ip:port` in the
//! `x-gateway-destination-endpoint` header and in `envoy.lb` dynamic metadata, the
//! gateway's subset hint honoured), on the same core router and events as the HTTP
//! proxy. Request bodies BUFFERED or FULL_DUPLEX_STREAMED (with or without trailers);
//! responses STREAMED, BUFFERED or FULL_DUPLEX_STREAMED. Served by tonic on its own port.

pub mod exchange;
pub mod messages;

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::{
    ExternalProcessor, ExternalProcessorServer,
};
use envoy_types::pb::envoy::service::ext_proc::v3::{ProcessingRequest, ProcessingResponse};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status, Streaming};

use crate::shared::Shared;
use exchange::Exchange;

/// Answers queued per stream before the picker waits for Envoy to read them.
const ANSWER_QUEUE: usize = 16;

pub struct EndpointPicker {
    shared: Arc<Shared>,
}

#[tonic::async_trait]
impl ExternalProcessor for EndpointPicker {
    type ProcessStream = ReceiverStream<Result<ProcessingResponse, Status>>;

    async fn process(
        &self,
        request: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<Self::ProcessStream>, Status> {
        let mut messages = request.into_inner();
        let (answers, stream) = mpsc::channel(ANSWER_QUEUE);
        let mut exchange = Exchange::new(self.shared.clone());
        tokio::spawn(async move {
            // Ends with the stream (Envoy done or reset): dropping the exchange
            // completes a request still in flight.
            while let Some(Ok(message)) = messages.next().await {
                let replies = match exchange.handle(message).await {
                    Ok(replies) => replies,
                    Err(status) => {
                        let _ = answers.send(Err(status)).await;
                        return;
                    }
                };
                for reply in replies {
                    if answers.send(Ok(reply)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(stream)))
    }
}

/// Serves the picker on `listener` until `stop` changes; open streams get `grace`.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
) {
    let picker = ExternalProcessorServer::new(EndpointPicker { shared });
    let (cut, mut cut_signal) = watch::channel(false);
    // The builder's tcp_nodelay only reaches listeners it binds itself: without it on
    // these sockets, each answer waits for a delayed ACK (~40 ms a request).
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .add_service(picker)
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = stop.changed().await;
            let _ = cut.send(true);
        });
    tokio::pin!(server);
    tokio::select! {
        _ = &mut server => {}
        _ = async {
            let _ = cut_signal.changed().await;
            tokio::time::sleep(grace).await;
        } => {}
    }
}
