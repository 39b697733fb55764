//! Routing core of llmlb.
//!
//! The crate has no Python in it: the PyO3 binding (`rust/llmlb-py`) only converts
//! types and errors. Module map:
//! - [`node_table`]: nodes, their live counters and GPU metrics (lock-free reads);
//! - [`prefix_index`]: the block-hash radix tree behind KV-cache affinity;
//! - [`guesses`]: expiring credit for prompts routed to nodes that publish KV events;
//! - [`hashing`]: how prompts become chains of block hashes;
//! - [`kv_events`]: what engines' KV-cache events say each node holds;
//! - [`scoring`]: per-candidate figures shared by the policies;
//! - [`policy`]: one file per routing policy, and their registry;
//! - [`lifecycle`]: requests in flight, completion and expiry;
//! - [`outcome`]: how a request ended;
//! - [`window`]: per-node sliding-window outcome statistics;
//! - [`canary`]: which requests a canary policy routes;
//! - [`router`]: the façade tying them together.

pub mod canary;
pub mod clock;
pub mod config;
pub mod counters;
pub mod error;
pub mod guesses;
pub mod hashing;
pub mod kv_events;
pub mod lifecycle;
pub mod node_table;
pub mod outcome;
pub mod policy;
pub mod prefix_index;
pub mod router;
pub mod scoring;
pub mod window;

pub use canary::CanarySplit;
pub use clock::Clock;
pub use config::RouterConfig;
pub use error::CoreError;
pub use kv_events::{Applied, EngineHash, KvEventsState, StoredBlocks};
pub use lifecycle::Completion;
pub use node_table::{
    BreakerState, GpuMetrics, MemoryUsage, NodeSpec, NodeStatus, DEFAULT_PEAK_TFLOPS,
};
pub use outcome::Outcome;
pub use policy::{PolicyKind, PolicyParams, REGISTRY};
pub use prefix_index::IndexStats;
pub use router::{
    BatchOutcome, CandidateScore, PrefixCredit, Prompt, Reason, RemoteRoute, RouteDecision,
    RouteRequest, Router,
};
pub use window::WindowSummary;
