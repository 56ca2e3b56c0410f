"""TLS settings of a MnemoClient: which CA to trust, and the client certificate for mTLS.

    from mnemo_client import MnemoClient
    from mnemo_client.tls import TlsConfig

    tls = TlsConfig(ca_file="ca.pem", cert_file="client.pem", key_file="client-key.pem")
    with MnemoClient("mnemo.example:50051", tls=tls) as client:
        ...

Files are read when the channel is made (a new MnemoClient reads them again). `ca_file=None`
trusts the system's roots; `server_name` checks the server's certificate against that name
instead of the target's host (an IP address target with a certificate for a DNS name, say).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import grpc


@dataclass(frozen=True)
class TlsConfig:
    """Where the PEM files are. cert_file and key_file go together (mTLS) or not at all."""

    ca_file: Optional[str] = None
    cert_file: Optional[str] = None
    key_file: Optional[str] = None
    server_name: Optional[str] = None

    def __post_init__(self):
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("TlsConfig: cert_file and key_file go together (both or neither)")

    def credentials(self) -> grpc.ChannelCredentials:
        """grpc.ssl_channel_credentials from the files (read now). OSError when one cannot be
        read."""
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca_file),
            private_key=_read(self.key_file),
            certificate_chain=_read(self.cert_file))

    def channel_options(self) -> list[tuple[str, Any]]:
        """Channel arguments the config needs (the expected server name, when given)."""
        if self.server_name:
            return [("grpc.ssl_target_name_override", self.server_name),
                    ("grpc.default_authority", self.server_name)]
        return []

    def channel(self, target: str,
                options: Optional[Sequence[tuple[str, Any]]] = None) -> grpc.Channel:
        """A secure channel to `target` with these settings."""
        return grpc.secure_channel(target, self.credentials(),
                                   list(options or []) + self.channel_options())


def _read(path: Optional[str]) -> Optional[bytes]:
    if path is None:
        return None
    with open(path, "rb") as f:
        return f.read()
