"""Python client for the mnemo inference server (gRPC API mnemo.v1).

The generated stubs (`mnemo.v1.mnemo_pb2`, `mnemo.v1.mnemo_pb2_grpc`) are not part of this
package: the build writes them to `<build dir>/python`, so run with

    PYTHONPATH=<build dir>/python:clients/python python -m mnemo_client --target HOST:PORT models

`MnemoClient` is the entry point (see `mnemo_client.client`); errors are `grpc.RpcError` and
`bad_request_violations(e)` lists the fields an INVALID_ARGUMENT names. The pure helpers
(`mnemo_client.utf8`, `mnemo_client.health`) import without the stubs; the names below are
loaded on first use.
"""

from mnemo_client.errors import bad_request_violations, rpc_status

__all__ = [
    "MnemoClient",
    "GenerateResult",
    "collect_generate",
    "commit_mode",
    "durability_value",
    "sampling_params",
    "bad_request_violations",
    "rpc_status",
]

_CLIENT_NAMES = {"MnemoClient", "GenerateResult", "collect_generate", "commit_mode",
                 "durability_value", "sampling_params"}


def __getattr__(name):
    # Lazy so that `import mnemo_client.utf8` works without the generated stubs on the path.
    if name in _CLIENT_NAMES:
        from mnemo_client import client
        return getattr(client, name)
    raise AttributeError(f"module 'mnemo_client' has no attribute {name!r}")
