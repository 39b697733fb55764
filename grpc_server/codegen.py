"""Regenerates the Python stubs from ``llmlb/v1/router.proto``.

Run from anywhere: ``python -m grpc_server.codegen`` writes ``router_pb2.py``,
``router_pb2.pyi`` and ``router_pb2_grpc.py`` next to the proto; ``--check`` only
compares them with a fresh generation and exits 1 when they drift (CI). The output
depends on the grpcio-tools version, so pin it where you check.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc  # type: ignore[import-untyped]

PACKAGE_DIR = Path(__file__).resolve().parent
ROOT = PACKAGE_DIR.parent
PROTO = Path("grpc_server/llmlb/v1/router.proto")
GENERATED = ("router_pb2.py", "router_pb2.pyi", "router_pb2_grpc.py")


def generate(out_dir: Path) -> None:
    """Writes the stubs under ``out_dir`` (mirroring the proto's path from the root)."""
    args = [
        "grpc_tools.protoc",
        f"--proto_path={ROOT}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        str(ROOT / PROTO),
    ]
    if protoc.main(args) != 0:
        raise SystemExit(f"protoc failed on {PROTO}")


def drifted() -> list[str]:
    """Names of generated files that differ from what the proto generates now."""
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        fresh_dir = Path(tmp) / PROTO.parent
        return [
            name
            for name in GENERATED
            if not (ROOT / PROTO.parent / name).exists()
            or not filecmp.cmp(fresh_dir / name, ROOT / PROTO.parent / name, shallow=False)
        ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when the stubs drift")
    args = parser.parse_args(argv)
    if args.check:
        stale = drifted()
        if stale:
            print(f"stale generated stubs: {', '.join(stale)}; run python -m grpc_server.codegen")
            return 1
        print("generated stubs are up to date")
        return 0
    generate(ROOT)
    print(f"generated {', '.join(GENERATED)} in {PROTO.parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
