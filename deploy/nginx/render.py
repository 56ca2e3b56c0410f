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
_HOST_PORT = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):([0-9]{1,5})$")
TEMP_DIRS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


def _check_address(value: str, what: str) -> str:
    match = _HOST_PORT.match(value)
    if match is None or not 0 < int(match.group(2)) < 65536:
        raise ValueError(f"{what} must be HOST:PORT, got {value!r}")
    return value


def render(listen: str, upstreams: Sequence[str], prefix: str, *, worker_processes: int = 1,
           keepalive: int = 32, max_fails: int = 1, fail_timeout: str = "2s",
           connect_timeout: str = "2s", next_upstream_tries: int = 3,
           worker_shutdown_timeout: str = "30s", template: str = TEMPLATE,
           user: Optional[str] = None) -> str:
    """The configuration text for a router on `listen` in front of `upstreams` (HOST:PORT of
    each replica's gRPC listener, in any order: the hash ring does not depend on it).

    `prefix` is the absolute folder of nginx's pid, logs and temp files. `user` is the worker
    processes' user when nginx starts as root (default: the user running this, so the workers
    can write the prefix); ignored otherwise. Raises ValueError on a malformed address, an
    empty or duplicated upstream list, or a relative prefix.
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
    fields = {
        "user": user_line, "worker_processes": str(worker_processes),
        "prefix": prefix.rstrip("/") or "/", "listen": listen, "servers": servers,
        "keepalive": str(keepalive), "connect_timeout": connect_timeout,
        "next_upstream_tries": str(next_upstream_tries),
        "worker_shutdown_timeout": worker_shutdown_timeout,
    }
    with open(template, encoding="utf-8") as f:
        text = f.read()
    missing = sorted(set(_FIELD.findall(text)) - fields.keys())
    if missing:
        raise ValueError(f"{template} has fields render() does not fill: {missing}")
    return _FIELD.sub(lambda m: fields[m.group(1)], text)


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
    ap.add_argument("--print", action="store_true", help="print the configuration instead")
    args = ap.parse_args(argv)
    try:
        if args.print:
            sys.stdout.write(render(args.listen, args.upstream, os.path.abspath(args.prefix),
                                    worker_processes=args.worker_processes,
                                    fail_timeout=args.fail_timeout))
            return 0
        print(write_config(args.listen, args.upstream, args.prefix,
                           worker_processes=args.worker_processes,
                           fail_timeout=args.fail_timeout))
    except ValueError as e:
        print(f"render.py: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
