"""Generates the Python gRPC stubs from the .proto files beside this script.

The .proto files are the only contract; the stubs are build output (git-ignored). This runs
from setup.py when the package is built or installed, and from `make` when a .proto changed.
"""

from __future__ import annotations

import sys
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent


def proto_files() -> list[Path]:
    return sorted(PROTO_ROOT.glob("llamaherd/**/*.proto"))


def generate(out_dir: Path = PROTO_ROOT) -> list[Path]:
    """Runs protoc over every .proto and returns the .proto files it compiled."""
    import grpc_tools
    from grpc_tools import protoc

    protos = proto_files()
    include = Path(grpc_tools.__file__).resolve().parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(p) for p in protos),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {', '.join(p.name for p in protos)}")
    return protos


if __name__ == "__main__":
    compiled = generate()
    print(f"generated stubs for {len(compiled)} proto files", file=sys.stderr)
