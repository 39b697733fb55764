"""TLS on the gRPC port, with a self-signed certificate made in the test."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_harness import running_server

from grpc_server.llmlb.v1 import router_pb2 as pb
from grpc_server.llmlb.v1 import router_pb2_grpc as pb_grpc


def self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def test_tls_round_trip_and_plaintext_refused(tmp_path: Path) -> None:
    cert_file, key_file = self_signed(tmp_path)

    async def scenario() -> None:
        tls = {"cert_file": str(cert_file), "key_file": str(key_file)}
        async with running_server({"server": {"tls": tls}}) as s:
            credentials = grpc.ssl_channel_credentials(cert_file.read_bytes())
            async with grpc.aio.secure_channel(s.target, credentials) as channel:
                stub = pb_grpc.RouterStub(channel)
                routed = await stub.Route(pb.RouteRequest(text="over tls"))
                assert routed.node_id in {"a", "b"}
            # s.stub is a plaintext channel: the TLS port does not answer it.
            try:
                await s.stub.Route(pb.RouteRequest(text="plain"), timeout=2)
            except grpc.aio.AioRpcError as error:
                assert error.code() in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                )
            else:
                raise AssertionError("plaintext call to a TLS port succeeded")

    asyncio.run(scenario())
