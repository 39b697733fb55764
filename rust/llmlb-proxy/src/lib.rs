//! llmlb's OpenAI-compatible HTTP proxy, in Rust so that no Python runs per request.
//!
//! It routes each request through the shared core [`llmlb_core::Router`], forwards it
//! over pooled keep-alive connections, retries or migrates it before its first byte,
//! relays the response frame by frame and completes the request exactly once. What the
//! routing service needs to hear (metrics, breaker feedback, other replicas) goes into an
//! [`events::EventQueue`] it drains in batches; what it decides (draining, canary,
//! tokenized models) comes back as a [`settings::Control`] swapped whole.
//!
//! Module map: [`admission`] (in-flight cap, wait queue, per-key rates), [`routing_key`] (what the router hashes), [`metering`] (tokens and usage
//! in responses), [`upstream`] (backend client and headers), [`forward`] (the attempt
//! loop), [`relay`] (response bodies), [`migration`], [`catalog`] (`/v1/models`),
//! [`server`] (accept loop and endpoints), [`shared`] (state and slots).

pub mod admission;
pub mod catalog;
pub mod error;
pub mod events;
pub mod forward;
pub mod metering;
pub mod migration;
pub mod relay;
pub mod routing_key;
pub mod server;
pub mod settings;
pub mod shared;
pub mod tokenize;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use llmlb_core::Router;
use tokio::net::TcpSocket;
use tokio::runtime::Runtime;
use tokio::sync::watch;

pub use error::ProxyError;
pub use events::{EventQueue, ProxyEvent};
pub use routing_key::{routing_key, RoutingKey};
pub use settings::{Control, ProxySettings};
pub use tokenize::{EngineTokenizer, Tokenized};

const LISTEN_BACKLOG: u32 = 2048;

/// A running proxy: its own multi-threaded runtime, stopped by [`Proxy::stop`] or drop.
pub struct Proxy {
    shared: Arc<shared::Shared>,
    runtime: Option<Runtime>,
    stop: watch::Sender<bool>,
    serving: Option<tokio::task::JoinHandle<()>>,
    pub local_addr: SocketAddr,
}

impl Proxy {
    /// Listens on `addr` (port 0: an ephemeral one) and serves until stopped.
    pub fn start(
        router: Arc<Router>,
        settings: ProxySettings,
        tokenizer: Option<Arc<dyn EngineTokenizer>>,
        control: Control,
        addr: SocketAddr,
    ) -> std::io::Result<Proxy> {
        settings
            .validate()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        if settings.worker_threads > 0 {
            builder.worker_threads(settings.worker_threads);
        }
        let runtime = builder.thread_name("llmlb-proxy").enable_all().build()?;
        let listener = runtime.block_on(async {
            let socket = if addr.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            socket.set_reuseaddr(true)?;
            socket.bind(addr)?;
            socket.listen(LISTEN_BACKLOG)
        })?;
        let local_addr = listener.local_addr()?;
        let shared = Arc::new(shared::Shared::new(router, settings, tokenizer));
        shared.control.store(Arc::new(control));
        let (stop, stopped) = watch::channel(false);
        let serving = runtime.spawn(server::serve(listener, shared.clone(), stopped));
        Ok(Proxy {
            shared,
            runtime: Some(runtime),
            stop,
            serving: Some(serving),
            local_addr,
        })
    }

    pub fn set_control(&self, control: Control) {
        self.shared.control.store(Arc::new(control));
    }

    pub fn control(&self) -> Arc<Control> {
        self.shared.control.load_full()
    }

    pub fn events(&self) -> &Arc<EventQueue> {
        &self.shared.events
    }

    /// Moves `node_id`'s requests that have no byte back yet (all, or those named) to
    /// other nodes; returns the ids that will be re-sent.
    pub fn migrate(&self, node_id: &str, request_ids: Option<&[String]>) -> Vec<String> {
        self.shared.movable.migrate(node_id, request_ids)
    }

    pub fn is_running(&self) -> bool {
        self.runtime.is_some()
    }

    /// Attempts waiting for their first byte.
    pub fn waiting_attempts(&self) -> usize {
        self.shared.movable.len()
    }

    /// Stops listening, gives open responses [`server::STOP_GRACE`], then cuts the rest
    /// (their slots are released as the handlers drop).
    pub fn stop(&mut self) {
        let Some(runtime) = self.runtime.take() else {
            return;
        };
        let _ = self.stop.send(true);
        if let Some(serving) = self.serving.take() {
            let _ = runtime.block_on(async {
                tokio::time::timeout(server::STOP_GRACE + Duration::from_secs(1), serving).await
            });
        }
        runtime.shutdown_timeout(Duration::from_secs(1));
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}
