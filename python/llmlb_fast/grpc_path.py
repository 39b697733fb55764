"""Where the ``grpc_server`` package (the ``llmlb.v1`` stubs and service) comes from.

A wheel installs it next to ``llmlb_fast``. An editable install (``make dev``) only puts
``python/`` on the path, while the package lives at the repository root: there the
root is added to ``sys.path``, so ``llmlb serve`` and the agent run from any directory.
"""

from __future__ import annotations

import sys
from pathlib import Path


def ensure_grpc_server() -> str:
    """Makes ``grpc_server`` importable; returns the directory that holds it."""
    try:
        import grpc_server
    except ImportError:
        root = Path(__file__).resolve().parents[2]
        if not (root / "grpc_server" / "__init__.py").is_file():
            raise
        sys.path.insert(0, str(root))
        import grpc_server
    return str(Path(grpc_server.__file__).resolve().parents[1])
