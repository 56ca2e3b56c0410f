"""Python client for the mnemo inference server (gRPC API mnemo.v1).

The generated stubs (`mnemo.v1.mnemo_pb2`, `mnemo.v1.mnemo_pb2_grpc`) come with the installed
package (`pip install clients/python` generates them from proto/); in the repository the build
writes them to `<build dir>/python`, so run from a checkout with

    PYTHONPATH=<build dir>/python:clients/python python -m mnemo_client --target HOST:PORT models

`MnemoClient` is the entry point (see `mnemo_client.client`); errors are `grpc.RpcError`,
`bad_request_violations(e)` lists the fields an INVALID_ARGUMENT names and `error_reason(e)` the
ErrorInfo reason. TLS and mTLS: `mnemo_client.tls.TlsConfig`. Retries: `mnemo_client.retry` (`RetryPolicy`, `OutcomeUnknownError`). The pure
helpers (`mnemo_client.utf8`, `mnemo_client.health`) import without the stubs; the names below
are loaded on first use.
"""

from mnemo_client.errors import (OutcomeUnknownError, bad_request_violations, error_info,
                                 error_reason, rpc_status)
from mnemo_client.retry import RetryPolicy
from mnemo_client.tls import TlsConfig

__all__ = [
    "MnemoClient",
    "GenerateResult",
    "EncodeResult",
    "collect_generate",
    "commit_mode",
    "durability_value",
    "pooling_value",
    "sampling_params",
    "bad_request_violations",
    "error_info",
    "error_reason",
    "rpc_status",
    "OutcomeUnknownError",
    "RetryPolicy",
    "TlsConfig",
]

_CLIENT_NAMES = {"MnemoClient", "GenerateResult", "EncodeResult", "collect_generate",
                 "commit_mode", "durability_value", "pooling_value", "sampling_params"}


def __getattr__(name):
    # Lazy so that `import mnemo_client.utf8` works without the generated stubs on the path.
    if name in _CLIENT_NAMES:
        from mnemo_client import client
        return getattr(client, name)
    raise AttributeError(f"module 'mnemo_client' has no attribute {name!r}")
