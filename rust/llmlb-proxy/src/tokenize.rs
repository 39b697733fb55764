//! The engine's tokenizer, for models configured with one: the proxy routes their
//! requests by the engine's token ids (what its KV events report). The tokenizers and
//! chat templates live with the service (Python); they are called off the async workers.

use crate::routing_key::RoutingKey;

pub enum Tokenized {
    Tokens(Vec<u32>),
    /// The chat template refused the request: it is routed by its text.
    Refused,
}

pub trait EngineTokenizer: Send + Sync + 'static {
    /// The key's engine token ids; `None` when the model has no tokenizer (any more).
    fn tokenize(&self, key: &RoutingKey) -> Option<Tokenized>;
}
