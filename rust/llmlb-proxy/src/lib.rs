//! llmlb's data path, in Rust so that no Python runs per request: the OpenAI-compatible
//! HTTP proxy and the Envoy ext_proc endpoint picker ([`ext_proc`]), one runtime and one
//! [`shared::Shared`] state for both.
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
//! [`server`] (accept loop and endpoints), [`shared`] (state and slots), [`ext_proc`]
//! (the picker's protocol).

pub mod admission;
pub mod catalog;
pub mod error;
pub mod events;
pub mod ext_proc;
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
pub use events::{EventQueue, ProxyEvent, Transport};
pub use routing_key::{routing_key, RoutingKey};
pub use settings::{Control, ProxySettings};
pub use tokenize::{EngineTokenizer, Tokenized};

const LISTEN_BACKLOG: u32 = 2048;

/// Where the data path listens (port 0: an ephemeral one); either may be off.
#[derive(Debug, Clone, Copy, Default)]
pub struct Listen {
    pub http: Option<SocketAddr>,
    pub ext_proc: Option<SocketAddr>,
}

/// A running data path: its own multi-threaded runtime, stopped by [`Proxy::stop`] or
/// drop.
pub struct Proxy {
    shared: Arc<shared::Shared>,
    runtime: Option<Runtime>,
    stop: watch::Sender<bool>,
    serving: Vec<tokio::task::JoinHandle<()>>,
    /// The bound addresses, as in [`Listen`].
    pub bound: Listen,
}

fn listener(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

impl Proxy {
    /// Listens where `listen` says and serves until stopped.
    pub fn start(
        router: Arc<Router>,
        settings: ProxySettings,
        tokenizer: Option<Arc<dyn EngineTokenizer>>,
        control: Control,
        listen: Listen,
    ) -> std::io::Result<Proxy> {
        settings
            .validate()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        if settings.worker_threads > 0 {
            builder.worker_threads(settings.worker_threads);
        }
        let runtime = builder.thread_name("llmlb-proxy").enable_all().build()?;
        let _entered = runtime.enter();
        let http = listen.http.map(listener).transpose()?;
        let ext_proc = listen.ext_proc.map(listener).transpose()?;
        let bound = Listen {
            http: http.as_ref().map(|l| l.local_addr()).transpose()?,
            ext_proc: ext_proc.as_ref().map(|l| l.local_addr()).transpose()?,
        };
        let shared = Arc::new(shared::Shared::new(router, settings, tokenizer));
        shared.control.store(Arc::new(control));
        let (stop, stopped) = watch::channel(false);
        let mut serving = Vec::new();
        if let Some(http) = http {
            serving.push(runtime.spawn(server::serve(http, shared.clone(), stopped.clone())));
        }
        if let Some(ext_proc) = ext_proc {
            let picker = ext_proc::serve(ext_proc, shared.clone(), stopped, server::STOP_GRACE);
            serving.push(runtime.spawn(picker));
        }
        drop(_entered);
        Ok(Proxy {
            shared,
            runtime: Some(runtime),
            stop,
            serving,
            bound,
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
        let serving = std::mem::take(&mut self.serving);
        let _ = runtime.block_on(async {
            let all = async {
                for task in serving {
                    let _ = task.await;
                }
            };
            tokio::time::timeout(server::STOP_GRACE + Duration::from_secs(1), all).await
        });
        runtime.shutdown_timeout(Duration::from_secs(1));
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}
