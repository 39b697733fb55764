"""The llmlb gRPC routing service: proto stubs (``grpc_server.llmlb.v1``) and the server."""
