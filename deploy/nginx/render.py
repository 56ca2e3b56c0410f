#!/usr/bin/env python3
"""Renders deploy/nginx/mnemo.conf.template into an nginx configuration for a set of mnemo-server
replicas (standard library only).

    python3 deploy/nginx/render.py --listen 127.0.0.1:8080 \
        --upstream 127.0.0.1:50051 --upstream 127.0.0.1:50052 --prefix /tmp/mnemo-router

writes <prefix>/nginx.conf (and the temp folders nginx needs) and prints its path; run it with

    nginx -p <prefix> -e <prefix>/error.log -c <prefix>/nginx.conf -g 'daemon off;'

After changing the replicas, render again and send the master process SIGHUP (or
``nginx -p <prefix> -c <prefix>/nginx.conf -s reload``). Every file nginx writes (pid, logs,
temp files) stays inside the prefix, so no root is needed.

TLS, each part optional: ``--tls-cert``/``--tls-key`` make the router accept TLS only (TLS 1.2
and 1.3); ``--upstream-tls-ca`` (with ``--upstream-tls-name``, the name the replicas'
certificates carry) makes it speak TLS to the replicas and verify them, and
``--upstream-tls-cert``/``--upstream-tls-key`` give it the client certificate replicas started
with ``--tls-client-ca`` require. Without them the configuration is the plaintext one.
"""

from __future__ import annotations

import argparse
import os
import pwd
import re
import sys
from typing import Optional, Sequence

TEMPLATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mnemo.conf.template")
_FIELD = re.compile(r"\{\{([a-z_]+)\}\}")
# A field alone on its line: replaced by its lines at that indentation, or dropped when empty.
_LINE_FIELD = re.compile(r"^([ \t]*)\{\{([a-z_]+)\}\}[ \t]*\n", re.MULTILINE)
_TLS_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")
# nginx would read these as syntax (or a variable, "$") inside an unquoted file name.
_UNSAFE_PATH = re.compile(r"[\s;{}\"'$#\\]")
TLS_PROTOCOLS = "TLSv1.2 TLSv1.3"
_HOST_PORT = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):([0-9]{1,5})$")
TEMP_DIRS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


def _check_address(value: str, what: str) -> str:
    match = _HOST_PORT.match(value)
    if match is None or not 0 < int(match.group(2)) < 65536:
        raise ValueError(f"{what} must be HOST:PORT, got {value!r}")
    return value


def _check_file(path: str, what: str) -> str:
    """`path` made absolute (nginx would resolve a relative one against its prefix); it must be
    a readable file whose name nginx takes unquoted."""
    if _UNSAFE_PATH.search(path):
        raise ValueError(f"{what}: {path!r} has a character nginx would misread (space, quote, "
                         "';', '{', '}', '$', '#' or backslash)")
    if not os.path.isfile(path) or not os.access(path, os.R_OK):
        raise ValueError(f"{what}: no readable file {path!r}")
    return os.path.abspath(path)


def _pair(cert: Optional[str], key: Optional[str], what: str) -> Optional[tuple[str, str]]:
    if (cert is None) != (key is None):
        raise ValueError(f"{what}-cert and {what}-key go together (both or neither)")
    if cert is None:
        return None
    return _check_file(cert, f"{what}-cert"), _check_file(key, f"{what}-key")


def _client_tls(cert: Optional[str], key: Optional[str]) -> tuple[str, str]:
    """(listen flag, server-block lines) of TLS toward clients; empty without a certificate."""
    pair = _pair(cert, key, "--tls")
    if pair is None:
        return "", ""
    return " ssl", "\n".join([
        f"ssl_certificate {pair[0]};",
        f"ssl_certificate_key {pair[1]};",
        f"ssl_protocols {TLS_PROTOCOLS};",
        "# A reconnecting client resumes its TLS session instead of a full handshake.",
        "ssl_session_cache shared:mnemo_tls:10m;",
        "ssl_session_timeout 1h;",
    ])


def _upstream_tls(ca: Optional[str], name: Optional[str], cert: Optional[str],
                  key: Optional[str]) -> tuple[str, str]:
    """(grpc_pass scheme, location lines) of TLS toward the replicas."""
    pair = _pair(cert, key, "--upstream-tls")
    if ca is None:
        if name is not None or pair is not None:
            raise ValueError("--upstream-tls-name, --upstream-tls-cert and --upstream-tls-key "
                             "need --upstream-tls-ca (the router always verifies replicas)")
        return "grpc", ""
    ca = _check_file(ca, "--upstream-tls-ca")
    if name is None:
        raise ValueError("--upstream-tls-ca needs --upstream-tls-name: the name every "
                         "replica's certificate carries (nginx would check the upstream "
                         "group's name, which none carries)")
    if not _TLS_NAME.match(name):
        raise ValueError(f"--upstream-tls-name must be a host name or address, got {name!r}")
    lines = [
        "# Every replica's certificate must chain to this CA and carry this name (a DNS or IP",
        "# subject alternative name); depth 2 allows one intermediate CA.",
        f"grpc_ssl_trusted_certificate {ca};",
        "grpc_ssl_verify on;",
        "grpc_ssl_verify_depth 2;",
        f"grpc_ssl_name {name};",
        f"grpc_ssl_protocols {TLS_PROTOCOLS};",
        "grpc_ssl_session_reuse on;",
    ]
    if pair is not None:
        lines += ["# For replicas that require a client certificate (--tls-client-ca).",
                  f"grpc_ssl_certificate {pair[0]};",
                  f"grpc_ssl_certificate_key {pair[1]};"]
    return "grpcs", "\n".join(lines)


def _fill(text: str, fields: dict[str, str]) -> str:
    def block(m: re.Match) -> str:
        value = fields[m.group(2)]
        return "".join(f"{m.group(1)}{line}\n" for line in value.splitlines())
    return _FIELD.sub(lambda m: fields[m.group(1)], _LINE_FIELD.sub(block, text))


def render(listen: str, upstreams: Sequence[str], prefix: str, *, worker_processes: int = 1,
           keepalive: int = 32, max_fails: int = 1, fail_timeout: str = "2s",
           connect_timeout: str = "2s", next_upstream_tries: int = 3,
           worker_shutdown_timeout: str = "30s", template: str = TEMPLATE,
           user: Optional[str] = None, tls_cert: Optional[str] = None,
           tls_key: Optional[str] = None, upstream_tls_ca: Optional[str] = None,
           upstream_tls_name: Optional[str] = None, upstream_tls_cert: Optional[str] = None,
           upstream_tls_key: Optional[str] = None) -> str:
    """The configuration text for a router on `listen` in front of `upstreams` (HOST:PORT of
    each replica's gRPC listener, in any order: the hash ring does not depend on it).

    `prefix` is the absolute folder of nginx's pid, logs and temp files. `user` is the worker
    processes' user when nginx starts as root (default: the user running this, so the workers
    can write the prefix); ignored otherwise.

    TLS toward clients: `tls_cert` and `tls_key` (PEM files). TLS toward the replicas:
    `upstream_tls_ca` (the CA their certificates chain to) with `upstream_tls_name` (the name
    they carry), plus `upstream_tls_cert`/`upstream_tls_key` when they require a client
    certificate. Without any of these the text is the plaintext configuration.

    Raises ValueError on a malformed address, an empty or duplicated upstream list, a relative
    prefix, a certificate without its key (or the reverse), a TLS file that is not there, or an
    upstream TLS option without `upstream_tls_ca`.
    """
    _check_address(listen, "--listen")
    if not upstreams:
        raise ValueError("at least one --upstream is needed")
    for u in upstreams:
        _check_address(u, "--upstream")
    if len(set(upstreams)) != len(upstreams):
        raise ValueError(f"an --upstream is given twice: {list(upstreams)}")
    if not os.path.isabs(prefix):
        raise ValueError(f"--prefix must be absolute, got {prefix!r}")
    if os.geteuid() == 0:
        user_line = f"user {user or pwd.getpwuid(os.getuid()).pw_name};"
    else:
        user_line = "# (not root: the workers run as the user starting nginx)"
    servers = "\n".join(
        f"        server {u} max_fails={max_fails} fail_timeout={fail_timeout};"
        for u in upstreams)
    listen_ssl, client_tls = _client_tls(tls_cert, tls_key)
    upstream_scheme, upstream_tls = _upstream_tls(upstream_tls_ca, upstream_tls_name,
                                                  upstream_tls_cert, upstream_tls_key)
    fields = {
        "user": user_line, "worker_processes": str(worker_processes),
        "prefix": prefix.rstrip("/") or "/", "listen": listen, "servers": servers,
        "keepalive": str(keepalive), "connect_timeout": connect_timeout,
        "next_upstream_tries": str(next_upstream_tries),
        "worker_shutdown_timeout": worker_shutdown_timeout,
        "listen_ssl": listen_ssl, "client_tls": client_tls,
        "upstream_scheme": upstream_scheme, "upstream_tls": upstream_tls,
    }
    with open(template, encoding="utf-8") as f:
        text = f.read()
    missing = sorted(set(_FIELD.findall(text)) - fields.keys())
    if missing:
        raise ValueError(f"{template} has fields render() does not fill: {missing}")
    return _fill(text, fields)


def write_config(listen: str, upstreams: Sequence[str], prefix: str, **options) -> str:
    """Renders the configuration into <prefix>/nginx.conf (replaced atomically, so a reload
    never reads half a file), creates the temp folders, and returns the file's path."""
    prefix = os.path.abspath(prefix)
    text = render(listen, upstreams, prefix, **options)
    for name in TEMP_DIRS:
        os.makedirs(os.path.join(prefix, "tmp", name), exist_ok=True)
    path = os.path.join(prefix, "nginx.conf")
    tmp = path + ".new"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
    return path


def nginx_command(nginx: str, prefix: str) -> list[str]:
    """The command line that runs nginx in the foreground on <prefix>/nginx.conf."""
    prefix = os.path.abspath(prefix)
    return [nginx, "-p", prefix + "/", "-e", os.path.join(prefix, "error.log"),
            "-c", os.path.join(prefix, "nginx.conf"), "-g", "daemon off;"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--listen", required=True, help="HOST:PORT the router accepts gRPC on")
    ap.add_argument("--upstream", action="append", required=True, metavar="HOST:PORT",
                    help="a replica's gRPC address (repeat for each replica)")
    ap.add_argument("--prefix", required=True, help="nginx's work folder (conf, pid, logs)")
    ap.add_argument("--worker-processes", type=int, default=1)
    ap.add_argument("--fail-timeout", default="2s",
                    help="how long a replica that refused a connection is skipped")
    ap.add_argument("--tls-cert", metavar="PEM", help="accept TLS only, with this certificate "
                    "(chain) toward clients (with --tls-key)")
    ap.add_argument("--tls-key", metavar="PEM", help="the key of --tls-cert")
    ap.add_argument("--upstream-tls-ca", metavar="PEM",
                    help="speak TLS to the replicas and verify them against this CA")
    ap.add_argument("--upstream-tls-name", metavar="NAME",
                    help="the name every replica's certificate carries (with --upstream-tls-ca)")
    ap.add_argument("--upstream-tls-cert", metavar="PEM",
                    help="client certificate for replicas that require one (--tls-client-ca)")
    ap.add_argument("--upstream-tls-key", metavar="PEM", help="the key of --upstream-tls-cert")
    ap.add_argument("--print", action="store_true", help="print the configuration instead")
    args = ap.parse_args(argv)
    options = dict(worker_processes=args.worker_processes, fail_timeout=args.fail_timeout,
                   tls_cert=args.tls_cert, tls_key=args.tls_key,
                   upstream_tls_ca=args.upstream_tls_ca, upstream_tls_name=args.upstream_tls_name,
                   upstream_tls_cert=args.upstream_tls_cert,
                   upstream_tls_key=args.upstream_tls_key)
    try:
        if args.print:
            sys.stdout.write(render(args.listen, args.upstream, os.path.abspath(args.prefix),
                                    **options))
            return 0
        print(write_config(args.listen, args.upstream, args.prefix, **options))
    except ValueError as e:
        print(f"render.py: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
