//! PyO3 binding of `llmlb-core`, imported as `llmlb_fast._core`. It converts types and
//! errors only; every routing rule lives in the core crate.

mod canary;
mod config;
mod decision;
mod errors;
mod hashing;
mod kv_events;
mod node;
mod prompt_args;
mod proxy;
mod request;
mod router;
mod sim;

use pyo3::prelude::*;

#[pymodule]
mod _core {
    #[pymodule_export]
    use super::canary::{canary_bucket, CanarySplit};
    #[pymodule_export]
    use super::config::RouterConfig;
    #[pymodule_export]
    use super::decision::{CandidateScore, Completion, RouteDecision};
    #[pymodule_export]
    use super::hashing::{chain_seed, hash_token_blocks};
    #[pymodule_export]
    use super::kv_events::{KvEventsOutcome, PrefixCredit};
    #[pymodule_export]
    use super::node::{check_node_address, memory_usage, Node, NodeStatus};
    #[pymodule_export]
    use super::proxy::HttpProxy;
    #[pymodule_export]
    use super::request::{routing_key, ResponseMeter, RoutingKey};
    #[pymodule_export]
    use super::router::Router;
    #[pymodule_export]
    use super::sim::BlockCache;

    use pyo3::prelude::*;

    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add("HASH_SEED", llmlb_core::hashing::HASH_SEED)?;
        m.add(
            "POLICIES",
            llmlb_core::REGISTRY
                .iter()
                .map(|r| r.name)
                .collect::<Vec<_>>(),
        )?;
        m.add("METRIC_FIELDS", llmlb_core::GpuMetrics::FIELDS.to_vec())?;
        m.add("__version__", env!("CARGO_PKG_VERSION"))?;
        Ok(())
    }
}
