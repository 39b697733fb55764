"""The OpenAI-compatible HTTP proxy: routes each request through the routing service,
forwards it, retries or migrates it before its first byte, and completes it once."""

from llmlb_fast.transports.proxy.app import ProxyServer
from llmlb_fast.transports.proxy.settings import ProxySettings, proxy_settings

__all__ = ["ProxyServer", "ProxySettings", "proxy_settings"]
