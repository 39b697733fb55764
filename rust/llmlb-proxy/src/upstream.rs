//! Backends: one pooled keep-alive client (TCP_NODELAY), URLs and forwarded headers.

use bytes::Bytes;
use std::net::IpAddr;

use http::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION};
use http::Uri;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::settings::ProxySettings;

pub type UpstreamClient = Client<HttpConnector, Full<Bytes>>;

/// Headers that belong to one connection and are never forwarded (RFC 9110 7.6.1),
/// plus those recomputed for the new message.
const HOP_BY_HOP: [&str; 11] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "expect",
    "host",
    "content-length",
];

pub fn client(settings: &ProxySettings) -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(settings.connect_timeout));
    connector.set_keepalive(Some(settings.keepalive_timeout));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(settings.keepalive_timeout)
        .pool_max_idle_per_host(settings.pool_size)
        .build(connector)
}

/// `address + path`; an address without a scheme (`10.0.0.5:8000`) means http.
pub fn backend_uri(address: &str, path: &str) -> Result<Uri, String> {
    let base = address.trim_end_matches('/');
    let url = if base.contains("://") {
        if !base.starts_with("http://") {
            return Err(format!("node address {address:?} is not an http:// URL"));
        }
        format!("{base}{path}")
    } else {
        format!("http://{base}{path}")
    };
    url.parse::<Uri>()
        .map_err(|error| format!("node address {address:?} is not a URL: {error}"))
}

/// `headers` without hop-by-hop ones, including those the `Connection` header names.
pub fn end_to_end(headers: &HeaderMap) -> HeaderMap {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::try_from(name.trim()).ok())
        .collect();
    let mut kept = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        if HOP_BY_HOP.contains(&name.as_str()) || named.contains(name) {
            continue;
        }
        kept.append(name.clone(), value.clone());
    }
    kept
}

const FORWARDED_FOR: &str = "x-forwarded-for";

/// Adds the client's address to `X-Forwarded-For` (after the addresses already there).
pub fn append_forwarded_for(headers: &mut HeaderMap, peer: IpAddr) {
    let chain = match headers.get(FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(earlier) if !earlier.trim().is_empty() => format!("{earlier}, {peer}"),
        _ => peer.to_string(),
    };
    if let Ok(value) = HeaderValue::from_str(&chain) {
        headers.insert(FORWARDED_FOR, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_and_headers() {
        assert_eq!(
            backend_uri("10.0.0.5:8000/", "/v1/models").unwrap(),
            "http://10.0.0.5:8000/v1/models"
        );
        assert_eq!(backend_uri("http://h:1", "/x").unwrap(), "http://h:1/x");
        assert!(backend_uri("ftp://h", "/x").is_err());
        assert!(backend_uri("", "/x").is_err());
        let mut headers = HeaderMap::new();
        headers.insert("connection", "keep-alive, x-secret".parse().unwrap());
        headers.insert("x-secret", "1".parse().unwrap());
        headers.insert("host", "a".parse().unwrap());
        headers.insert("authorization", "Bearer k".parse().unwrap());
        let mut kept = end_to_end(&headers);
        assert_eq!(kept.len(), 1);
        assert!(kept.contains_key("authorization"));
        let peer: IpAddr = "10.1.2.3".parse().unwrap();
        append_forwarded_for(&mut kept, peer);
        assert_eq!(kept["x-forwarded-for"], "10.1.2.3");
        kept.insert("x-forwarded-for", "1.1.1.1".parse().unwrap());
        append_forwarded_for(&mut kept, peer);
        assert_eq!(kept["x-forwarded-for"], "1.1.1.1, 10.1.2.3");
    }
}
