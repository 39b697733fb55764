"""The ways requests reach the routing service: the ``llmlb.v1`` gRPC API
(``grpc_api``), the OpenAI-compatible HTTP proxy (``proxy``) and the Envoy ext_proc
endpoint picker (``ext_proc``). Each parses and translates; none calls the core
``Router`` itself."""
