"""Traffic controller: an OpenAI-compatible streaming proxy and an Envoy ext_proc
endpoint picker, both driving a :class:`llmlb_fast.Router` from request start to end."""

from llmlb_fast.proxy.app import ProxyServer
from llmlb_fast.proxy.forward import Hooks
from llmlb_fast.proxy.settings import ProxySettings

__all__ = ["Hooks", "ProxyServer", "ProxySettings"]
