"""The standard gRPC health service (grpc.health.v1) without its generated stubs.

Debian's python3-grpcio ships no `grpc_health` package, so the request and response (one string
field, one enum field) are encoded by hand and the method is called by name.
"""

from __future__ import annotations

import grpc

HEALTH_CHECK_METHOD = "/grpc.health.v1.Health/Check"

# grpc.health.v1.HealthCheckResponse.ServingStatus
UNKNOWN = 0
SERVING = 1
NOT_SERVING = 2
SERVICE_UNKNOWN = 3
STATUS_NAMES = {UNKNOWN: "UNKNOWN", SERVING: "SERVING", NOT_SERVING: "NOT_SERVING",
                SERVICE_UNKNOWN: "SERVICE_UNKNOWN"}


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def encode_health_request(service: str = "") -> bytes:
    """HealthCheckRequest{service}: field 1, length-delimited; empty for the whole server."""
    if not service:
        return b""
    raw = service.encode("utf-8")
    return b"\x0a" + _varint(len(raw)) + raw


def decode_health_response(data: bytes) -> int:
    """The `status` (field 1, varint) of a serialized HealthCheckResponse; 0 when absent."""
    pos, status = 0, UNKNOWN
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        field, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, pos = _read_varint(data, pos)
            if field == 1:
                status = value
        elif wire_type == 2:
            length, pos = _read_varint(data, pos)
            pos += length
        elif wire_type == 1:
            pos += 8
        elif wire_type == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire_type}")
    if pos != len(data):
        raise ValueError("truncated HealthCheckResponse")
    return status


def health_check(channel: grpc.Channel, service: str = "", timeout: float | None = None) -> int:
    """Calls grpc.health.v1.Health/Check; returns the serving status (SERVING == 1).

    Raises grpc.RpcError when the call fails (e.g. UNAVAILABLE while nothing listens).
    """
    call = channel.unary_unary(HEALTH_CHECK_METHOD)  # bytes in, bytes out
    return decode_health_response(call(encode_health_request(service), timeout=timeout))
