"""The OpenAI-compatible HTTP proxy (Rust, in ``_core``): routes each request on the
service's core router, forwards it, retries or migrates it before its first byte, and
completes it once; the service hears of it in batches."""

from llmlb_fast.transports.proxy.app import ProxyServer
from llmlb_fast.transports.proxy.settings import ProxySettings, proxy_settings

__all__ = ["ProxyServer", "ProxySettings", "proxy_settings"]
