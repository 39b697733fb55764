"""The ways requests reach the routing service: the ``llmlb.v1`` gRPC API
(``grpc_api``) and the Rust data path (``proxy``: the OpenAI-compatible HTTP proxy and
the Envoy ext_proc endpoint picker). Each parses and translates; none calls the core
``Router`` itself."""
