"""``llmlb serve`` as a process: starts, answers health checks, stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
from grpc_harness import merged, write_config
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]


def test_serve_runs_and_drains_on_sigterm(tmp_path: Path) -> None:
    path = tmp_path / "llmlb.yaml"
    write_config(path, merged({"timeouts": {"drain": 1}}))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "llmlb_fast.cli", "serve", "--config", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert "serving on port" in line, line
        port = int(line.split("port ")[1].split(";")[0])
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=5
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def test_serve_refuses_an_invalid_config(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("nodes: [{id: a, adress: x}]\n")
    result = subprocess.run(
        [sys.executable, "-m", "llmlb_fast.cli", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=30,
    )
    assert result.returncode == 2
    assert "nodes.0.adress" in result.stdout


def test_the_wire_package_imports_from_any_directory_without_path_patches(
    tmp_path: Path,
) -> None:
    """A wheel ships ``grpc_server``; an editable install sees the repository's copy
    through ``python/grpc_server`` (a symlink). Importing the server patches no path."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    script = (
        "import sys\n"
        "before = list(sys.path)\n"
        "import llmlb_fast.server, grpc_server.llmlb.v1.router_pb2 as pb\n"
        "assert sys.path == before, 'sys.path was patched'\n"
        "print(pb.__file__)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    stubs = Path(done.stdout.strip()).resolve()
    assert stubs.name == "router_pb2.py" and stubs.parent.name == "v1"
