//! Response bodies: a whole body in one write, or the backend's stream relayed frame by
//! frame (metered as it passes, completed when it ends, fails or the client leaves).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use llmlb_core::Outcome;
use tokio::time::Sleep;

use crate::admission::Permit;
use crate::metering::ResponseMeter;
use crate::shared::Slot;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub enum ProxyBody {
    Whole(Option<Bytes>),
    Relay(Box<RelayBody>),
}

impl ProxyBody {
    pub fn whole(bytes: impl Into<Bytes>) -> Self {
        ProxyBody::Whole(Some(bytes.into()))
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Whole(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::Relay(relay) => relay.poll_relay(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, ProxyBody::Whole(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Whole(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            ProxyBody::Relay(_) => SizeHint::default(),
        }
    }
}

#[derive(Debug)]
struct StreamIdle(Duration);

impl std::fmt::Display for StreamIdle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the backend sent nothing for {:?}", self.0)
    }
}

impl std::error::Error for StreamIdle {}

pub struct RelayBody {
    first: Option<Bytes>,
    upstream: Incoming,
    meter: ResponseMeter,
    slot: Slot,
    ttft_s: f64,
    idle: Pin<Box<Sleep>>,
    idle_timeout: Duration,
    /// The request's place under the admission cap, held until the stream ends.
    pub permit: Option<Permit>,
}

impl RelayBody {
    /// `first`: the bytes that arrived `sent_at.elapsed()` after the request was sent.
    pub fn new(
        slot: Slot,
        first: Bytes,
        upstream: Incoming,
        sent_at: Instant,
        idle_timeout: Duration,
    ) -> Self {
        let mut meter = ResponseMeter::default();
        meter.feed_stream(&first);
        RelayBody {
            first: Some(first).filter(|b| !b.is_empty()),
            upstream,
            meter,
            ttft_s: sent_at.elapsed().as_secs_f64(),
            slot,
            idle: Box::pin(tokio::time::sleep(idle_timeout)),
            idle_timeout,
            permit: None,
        }
    }

    fn finish(&mut self, outcome: Outcome) {
        self.slot
            .complete(outcome, Some(self.ttft_s), Some(&self.meter));
    }

    fn poll_relay(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        match Pin::new(&mut self.upstream).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.meter.feed_stream(data);
                }
                let deadline = tokio::time::Instant::now() + self.idle_timeout;
                self.idle.as_mut().reset(deadline);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                // Too late to retry: the client sees a cut stream, not a clean end.
                self.finish(Outcome::Error);
                Poll::Ready(Some(Err(error.into())))
            }
            Poll::Ready(None) => {
                self.meter.finish_stream();
                self.finish(Outcome::Ok);
                Poll::Ready(None)
            }
            Poll::Pending => {
                if self.idle.as_mut().poll(cx).is_ready() {
                    self.finish(Outcome::Timeout);
                    return Poll::Ready(Some(Err(Box::new(StreamIdle(self.idle_timeout)))));
                }
                Poll::Pending
            }
        }
    }
}

impl Drop for RelayBody {
    fn drop(&mut self) {
        // Dropped before its end: the client left (the node did nothing wrong).
        self.finish(Outcome::Ok);
    }
}
