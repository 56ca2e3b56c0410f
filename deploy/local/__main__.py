"""python3 -m deploy.local: N mnemo-server replicas on loopback sharing one session store, nginx
routing by session id in front, Prometheus scraping every replica; Ctrl-C (or SIGTERM) stops
everything, the replicas draining their sessions to the store.

    deploy/local/run.sh [--replicas 3] [--router 127.0.0.1:50050] [--store DIR] …
    (run.sh builds first; this module expects build/release and its python/ stubs)

--tls: a private CA (WORKDIR/tls/ca.pem) and certificates: clients reach nginx over TLS, nginx
and the replicas reach the replicas over mTLS. --auth-file FILE: tenants (docs/server-api.md
"Tenants"); the replicas serve a copy with an admin tenant "replicas" added for hand-offs.

docs/deploy.md "Local three-replica setup" describes it.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from typing import Optional, Sequence

from deploy.local.cluster import (DEFAULT_MODEL, REPLICA_TENANT, ROOT, Cluster, ClusterConfig,
                                  ClusterError)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m deploy.local", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--server", default=os.path.join(ROOT, "build", "release", "mnemo-server"),
                    help="the mnemo-server binary")
    ap.add_argument("--model", action="append", metavar="NAME=DIR",
                    help=f"a model to serve (repeatable; default: default={DEFAULT_MODEL})")
    ap.add_argument("--router", default="127.0.0.1:50050",
                    help="where nginx accepts gRPC (HOST:PORT)")
    ap.add_argument("--first-port", type=int, default=50051,
                    help="replica i listens on FIRST_PORT + i (0: free ports)")
    ap.add_argument("--first-metrics-port", type=int, default=9465,
                    help="replica i serves /metrics on FIRST_METRICS_PORT + i (0: free ports)")
    ap.add_argument("--prometheus-port", type=int, default=9090)
    ap.add_argument("--no-prometheus", action="store_true")
    ap.add_argument("--workdir", default="/tmp/mnemo-local",
                    help="logs, nginx's and Prometheus's files")
    ap.add_argument("--store", default="",
                    help="the shared session store (default: WORKDIR/store; it is kept)")
    ap.add_argument("--durability", default="sync", choices=("none", "async", "sync"))
    ap.add_argument("--shutdown-grace", type=float, default=10.0, metavar="SECONDS")
    ap.add_argument("--tls", action="store_true",
                    help="TLS to the router, mTLS behind it (a private CA in WORKDIR/tls)")
    ap.add_argument("--first-health-port", type=int, default=0,
                    help="replica i serves plaintext grpc.health.v1 on FIRST_HEALTH_PORT + i "
                    "(default: with --tls, free ports; without, none)")
    ap.add_argument("--auth-file", default="", metavar="FILE",
                    help="tenants (JSON, docs/server-api.md); edits apply while running. The "
                    f"name {REPLICA_TENANT!r} is taken: the harness adds that admin tenant")
    ap.add_argument("server_flags", nargs="*", metavar="-- FLAG",
                    help="more mnemo-server flags for every replica (after --)")
    args = ap.parse_args(argv)

    host, router_port = args.router.rsplit(":", 1)
    config = ClusterConfig(
        server_bin=args.server, workdir=args.workdir,
        models=args.model or [f"default={DEFAULT_MODEL}"], store_dir=args.store,
        replicas=args.replicas, host=host, router_port=int(router_port),
        base_port=args.first_port, metrics_base_port=args.first_metrics_port,
        durability=args.durability, shutdown_grace_s=args.shutdown_grace,
        tls=args.tls, health_base_port=args.first_health_port, auth_file=args.auth_file,
        extra_flags=list(args.server_flags),
        prometheus_bin=None if args.no_prometheus else "/usr/bin/prometheus",
        prometheus_port=args.prometheus_port)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        cluster = Cluster(config)
    except ClusterError as e:
        print(f"deploy.local: {e}", file=sys.stderr)
        return 1
    try:
        cluster.start()
    except ClusterError as e:
        cluster.close()
        print(f"deploy.local: {e}", file=sys.stderr)
        return 1
    except BaseException:  # e.g. grpc not importable: stop what did start
        cluster.close()
        raise
    print(cluster.describe())
    token = " --token-file TOKEN_FILE" if args.auth_file else ""
    print(f"\ntry: python3 -m mnemo_client {' '.join(cluster.client_flags())}{token} create")
    if args.auth_file:
        print("  (TOKEN_FILE: a file holding the token of one of your tenants, or set "
              "$MNEMO_TOKEN and leave --token-file out)")
    print("Ctrl-C stops everything (the replicas drain their sessions to the store).",
          flush=True)
    while not stop.wait(1.0):
        try:
            if cluster.sync_auth():
                print(f"deploy.local: {args.auth_file} changed: copied for the replicas, "
                      "which apply it within a second (a refusal is in their logs)", flush=True)
        except ClusterError as e:  # the replicas keep the previous tenants
            print(f"deploy.local: {e} (not applied)", file=sys.stderr, flush=True)
        dead = [r for r in cluster.replicas if not r.alive()]
        if dead:
            for r in dead:
                print(f"deploy.local: replica {r.replica_id} exited with "
                      f"{r.proc.returncode}; its log: {r.log_path}", file=sys.stderr)
            break
    print("stopping…", flush=True)
    codes = cluster.close()
    print("replica exit codes: " + ", ".join(f"{k} {v}" for k, v in codes.items()))
    return 0 if all(code == 0 for code in codes.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
