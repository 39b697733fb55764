//! OpenAI-style error answers (`{"error": {"message", "type", "code"}}`) and the one
//! mapping from the router's refusals to them.

use bytes::Bytes;
use http::StatusCode;
use llmlb_core::CoreError;

/// A request the proxy answers itself.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyError {
    pub status: StatusCode,
    pub message: String,
    pub error_type: &'static str,
    pub code: &'static str,
    /// Sent as `Retry-After` (429s).
    pub retry_after_s: Option<u64>,
}

impl ProxyError {
    pub fn new(
        status: StatusCode,
        message: String,
        error_type: &'static str,
        code: &'static str,
    ) -> Self {
        ProxyError {
            status,
            message,
            error_type,
            code,
            retry_after_s: None,
        }
    }

    pub fn too_many_requests(message: &str, retry_after_s: u64) -> Self {
        ProxyError {
            retry_after_s: Some(retry_after_s),
            ..ProxyError::new(
                StatusCode::TOO_MANY_REQUESTS,
                message.to_owned(),
                "rate_limit_error",
                "too_many_requests",
            )
        }
    }

    pub fn with_code(self, code: &'static str) -> Self {
        ProxyError { code, ..self }
    }

    pub fn invalid_request(message: impl Into<String>, code: &'static str) -> Self {
        ProxyError::new(
            StatusCode::BAD_REQUEST,
            message.into(),
            "invalid_request_error",
            code,
        )
    }

    pub fn unknown_model(model: &str) -> Self {
        ProxyError::new(
            StatusCode::NOT_FOUND,
            format!("The model {model:?} does not exist on any backend."),
            "invalid_request_error",
            "model_not_found",
        )
    }

    pub fn body_too_large(limit: usize) -> Self {
        ProxyError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("Request body is larger than the limit of {limit} bytes."),
            "invalid_request_error",
            "request_too_large",
        )
    }

    pub fn no_backend(message: impl Into<String>) -> Self {
        ProxyError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            message.into(),
            "service_unavailable",
            "no_backend_available",
        )
    }

    pub fn draining() -> Self {
        ProxyError::no_backend("The server is draining; send the request elsewhere.")
    }

    pub fn upstream_failed(message: impl Into<String>) -> Self {
        ProxyError::new(
            StatusCode::BAD_GATEWAY,
            message.into(),
            "upstream_error",
            "upstream_failed",
        )
    }

    pub fn upstream_timeout(timeout_s: f64) -> Self {
        ProxyError::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!("The backend did not answer within {timeout_s} s."),
            "timeout",
            "upstream_timeout",
        )
    }

    pub fn invalid_api_key() -> Self {
        ProxyError::new(
            StatusCode::UNAUTHORIZED,
            "Incorrect or missing API key (Authorization: Bearer KEY).".into(),
            "invalid_request_error",
            "invalid_api_key",
        )
    }

    pub fn unknown_endpoint(method: &str, path: &str) -> Self {
        ProxyError::new(
            StatusCode::NOT_FOUND,
            format!("Unknown endpoint: {method} {path}"),
            "invalid_request_error",
            "unknown_endpoint",
        )
    }

    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        ProxyError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{path} does not accept {method}"),
            "invalid_request_error",
            "method_not_allowed",
        )
    }

    /// What a client sees when the router refused its request, and the refusal's kind
    /// (the `error` label of `llmlb_route_errors_total`).
    pub fn from_route(error: &CoreError, model: &str) -> (Self, &'static str) {
        match error {
            CoreError::UnknownModel(_) => (ProxyError::unknown_model(model), "unknown_model"),
            CoreError::NoAvailableNode(_) => (no_node(error), "no_available_node"),
            CoreError::UnknownNode(_) => (no_node(error), "unknown_node"),
            CoreError::TableFull(_) => (no_node(error), "table_full"),
            CoreError::DuplicateRequest(_) => (
                ProxyError::new(
                    StatusCode::CONFLICT,
                    error.to_string(),
                    "invalid_request_error",
                    "duplicate_request",
                ),
                "duplicate_request",
            ),
            CoreError::InvalidInput(_) | CoreError::InvalidConfig(_) => (
                ProxyError::invalid_request(error.to_string(), "invalid_request"),
                "invalid_input",
            ),
        }
    }

    pub fn body(&self) -> Bytes {
        let document = serde_json::json!({
            "error": {"message": self.message, "type": self.error_type, "code": self.code}
        });
        Bytes::from(document.to_string())
    }
}

fn no_node(error: &CoreError) -> ProxyError {
    ProxyError::no_backend(format!("No backend can take the request: {error}"))
}

impl std::fmt::Display for ProxyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl std::error::Error for ProxyError {}
