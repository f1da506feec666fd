#!/usr/bin/env python3
"""Regenerate the gRPC stubs of the KServe v2 protocol from their .proto (grpcio-tools, the `dev` extra).

    .venv/bin/python scripts/gen_grpc.py           # rewrite the generated modules
    .venv/bin/python scripts/gen_grpc.py --check   # exit 1 when they differ from what would be generated

Writes `grpc_service_pb2.py`, `grpc_service_pb2.pyi` and `grpc_service_pb2_grpc.py` beside
`server/ranet_serve/api/grpc/protos/grpc_service.proto`. They are committed (the serving image needs no
grpcio-tools) and left out of ruff and mypy as generated code (pyproject.toml).

One edit after protoc: the messages are registered in a descriptor pool of their own, not in protobuf's
process-wide default pool. tritonclient.grpc (and KServe, MLServer) register their own copy of the same
`inference.*` messages there, and protobuf refuses a second file defining the same names ("duplicate
symbol 'inference.ServerLiveRequest'"), so a process that imports both (the tests, a benchmark, a user's
pre- or post-processing script) could not start. The wire format does not depend on the pool.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOT = REPO / "server"  # the import root: generated imports read `from ranet_serve.api.grpc.protos ...`
PROTO = Path("ranet_serve/api/grpc/protos/grpc_service.proto")
GENERATED = ("grpc_service_pb2.py", "grpc_service_pb2.pyi", "grpc_service_pb2_grpc.py")
DEFAULT_POOL = "DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile("
PRIVATE_POOL = (
    "# A pool of its own, not the default one (scripts/gen_grpc.py says why).\n"
    "_POOL = _descriptor_pool.DescriptorPool()\n"
    "DESCRIPTOR = _POOL.AddSerializedFile("
)


def generate(out: Path) -> None:
    """protoc into `out` (same layout as server/), then the private-pool edit."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{ROOT}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            str(ROOT / PROTO),
        ],
        check=True,
    )
    module = out / PROTO.parent / "grpc_service_pb2.py"
    text = module.read_text()
    if text.count(DEFAULT_POOL) != 1:
        sys.exit(f"{module.name}: protoc's output changed shape; update the pool edit in {__file__}")
    module.write_text(text.replace(DEFAULT_POOL, PRIVATE_POOL))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 when stale")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        stale = []
        for name in GENERATED:
            fresh = Path(tmp) / PROTO.parent / name
            committed = ROOT / PROTO.parent / name
            if not committed.is_file() or committed.read_bytes() != fresh.read_bytes():
                stale.append(name)
                if not args.check:
                    shutil.copyfile(fresh, committed)
    if args.check:
        if stale:
            print(f"stale: {', '.join(stale)}; run scripts/gen_grpc.py", file=sys.stderr)
            return 1
        print("generated gRPC modules are up to date")
        return 0
    print(f"wrote {', '.join(stale) or 'nothing (up to date)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
