"""A local mnemo cluster: N mnemo-server replicas on loopback sharing one session store, nginx in
front (deploy/nginx/mnemo.conf.template) and optionally a real Prometheus scraping every
replica. The one harness behind the documented command (``python3 -m deploy.local``), the
replica tests (tests/server/test_server_replicas.py) and the router benchmark
(bench/runners/run_replica_bench.py).

Each replica keeps its replica id and its ports for its whole life: a restart (after SIGTERM or
kill -9) binds the same ports, so the router's upstream list stays valid; a replica that joins or
leaves re-renders the router's configuration and reloads nginx (SIGHUP), and rewrites
Prometheus's file-discovered targets.

Every process runs in its own session (process group): a Ctrl-C in the terminal reaches only
the Python process, which stops them in order (router first, then the replicas drain).

Secure (``ClusterConfig.tls``, ``auth_file``): a private CA under <workdir>/tls signs the
router's certificate and one per replica; clients reach nginx over TLS, nginx reaches the
replicas over mTLS (verifying them, presenting its own client certificate), and the replicas
require client certificates from that CA and hand sessions to each other over the same mTLS.
The harness checks health on each replica's plaintext health listener. With an auth file, the
replicas serve a copy of it with an admin tenant "replicas" added, whose token (generated,
<workdir>/replica-token) they send with HandOffSession.

Depends on the standard library and the Python client's health check (mnemo_client.health,
which needs no generated stubs), and with TLS on `cryptography` (deploy/local/certs.py); never
on tests/ or bench/.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Callable, Iterable, Optional, Sequence

from deploy.nginx import render as nginx_render

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
#: Alerting and recording rules loaded into Prometheus when the file exists.
RULES_FILE = os.path.join(ROOT, "deploy", "prometheus", "mnemo-rules.yml")
#: The embedded default model (README quick start; tools/run.sh).
DEFAULT_MODEL = os.path.join(ROOT, "models", "teacher")
#: The name every replica's certificate carries and the router checks (the replicas are reached
#: by address, so the name cannot be the host's).
REPLICA_TLS_NAME = "mnemo-replica"
#: The admin tenant the harness adds to a copy of the auth file for hand-offs between replicas.
REPLICA_TENANT = "replicas"


class ClusterError(RuntimeError):
    """A process of the cluster did not start, stop or answer as it must; the message says which
    and ends with the tail of its log."""


_HANDED_OUT: set = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that nothing listens on right now and that this process has not
    handed out before (the kernel may offer a port again until its first user binds it, so a
    replica's gRPC and metrics ports could otherwise be the same)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if (host, port) not in _HANDED_OUT:
            _HANDED_OUT.add((host, port))
            return port


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _tail(path: str, nbytes: int = 6000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - nbytes))
            return f.read().decode("utf-8", errors="replace")
    except OSError as e:
        return f"(no log: {e})"


def server_flags(binary: str) -> set[str]:
    """The long flags `binary --help` documents (e.g. {"--listen", "--replica-id", …})."""
    proc = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=30)
    words = (proc.stdout + proc.stderr).split()
    return {w.rstrip(",") for w in words if w.startswith("--") and len(w) > 2}


def _write_private(path: str, data: bytes) -> None:
    """Writes `path` atomically (a rename: a server re-reading it never sees half a file),
    readable by its owner only."""
    tmp = path + ".new"
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
        f.write(data)
    os.replace(tmp, path)


# --- replicas ---------------------------------------------------------------------------------

@dataclasses.dataclass
class ReplicaTls:
    """PEM files of a replica's mTLS: its certificate and key (served to clients and presented
    to the other replicas) and the CA every client certificate must chain to."""

    cert: str
    key: str
    client_ca: str


@dataclasses.dataclass
class ReplicaConfig:
    """What every replica of a cluster shares."""

    binary: str
    models: list[str]  # --model NAME=DIR specs, the first the default
    store_dir: str
    workdir: str  # logs
    host: str = "127.0.0.1"
    durability: str = "sync"  # the store's default durability (--durability)
    shutdown_grace_s: float = 5.0
    # --replica-id and --advertise (DESIGN.md §3: ownership across replicas). Off only for a
    # server built before replicas had identities (it refuses unknown flags).
    identity: bool = True
    auth_file: str = ""  # --auth-file ("": none)
    replica_token_file: str = ""  # --replica-token-file ("": none)
    extra_flags: list[str] = dataclasses.field(default_factory=list)
    env: Optional[dict[str, str]] = None  # default: os.environ + OPENBLAS_NUM_THREADS=1


class Replica:
    """One mnemo-server replica with a fixed id and fixed gRPC, metrics and (optional) health
    ports; with `tls`, its gRPC listener requires mTLS and needs a health port (the harness's
    health checks go there, in plaintext).

    Not started on construction: ``start()`` then ``wait_serving()``. Every start appends to
    the same log file (<workdir>/<replica id>.log). Methods are called from one thread at a time
    (the cluster's), except ``alive`` and ``log_tail``.
    """

    def __init__(self, config: ReplicaConfig, replica_id: str, port: int, metrics_port: int,
                 health_port: int = 0, tls: Optional[ReplicaTls] = None):
        if tls is not None and not health_port:
            raise ValueError(f"replica {replica_id}: TLS needs a health port")
        self.config = config
        self.replica_id = replica_id
        self.port = port
        self.metrics_port = metrics_port
        self.health_port = health_port
        self.tls = tls
        self.target = f"{config.host}:{port}"
        self.metrics_target = f"{config.host}:{metrics_port}"
        # Where the harness asks grpc.health.v1, in plaintext.
        self.health_target = f"{config.host}:{health_port}" if health_port else self.target
        self.log_path = os.path.join(config.workdir, f"{replica_id}.log")
        self.proc: Optional[subprocess.Popen] = None
        self.starts = 0
        self.exit_codes: list[int] = []  # of every process that ended, in order

    def args(self) -> list[str]:
        c = self.config
        flags = [c.binary, "--listen", self.target, "--metrics-listen", self.metrics_target]
        for spec in c.models:
            flags += ["--model", spec]
        flags += ["--session-store", c.store_dir, "--durability", c.durability,
                  "--shutdown-grace", f"{c.shutdown_grace_s:g}s"]
        if c.identity:
            flags += ["--replica-id", self.replica_id, "--advertise", self.target]
        if self.health_port:
            flags += ["--health-listen", self.health_target]
        if self.tls is not None:
            flags += ["--tls-cert", self.tls.cert, "--tls-key", self.tls.key,
                      "--tls-client-ca", self.tls.client_ca]
        if c.auth_file:
            flags += ["--auth-file", c.auth_file]
        if c.replica_token_file:
            flags += ["--replica-token-file", c.replica_token_file]
        return flags + list(c.extra_flags)

    def start(self) -> None:
        if self.alive():
            raise ClusterError(f"{self.replica_id} is already running (pid {self.proc.pid})")
        env = dict(os.environ if self.config.env is None else self.config.env)
        if self.config.env is None:
            # Several replicas share the machine's cores: one BLAS thread each keeps spinning
            # thread pools from starving each other (docs/deploy.md).
            env.setdefault("OPENBLAS_NUM_THREADS", "1")
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== start {self.starts + 1}: {' '.join(self.args())}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(self.args(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env,
                                         start_new_session=True)
        self.starts += 1

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, nbytes: int = 6000) -> str:
        return _tail(self.log_path, nbytes)

    def _fail(self, message: str) -> ClusterError:
        return ClusterError(f"replica {self.replica_id} ({self.target}): {message}\n"
                            f"--- {self.log_path} (tail)\n{self.log_tail()}")

    def health(self, timeout: float = 1.0) -> int:
        """grpc.health.v1 status of service "" (mnemo_client.health.SERVING, …); raises
        grpc.RpcError when the replica does not answer."""
        import grpc
        from mnemo_client import health
        with grpc.insecure_channel(self.health_target) as channel:
            return health.health_check(channel, timeout=timeout)

    def wait_serving(self, timeout: float = 60.0) -> None:
        """Polls the health service until SERVING; raises ClusterError if the process exits or
        the time runs out."""
        import grpc
        from mnemo_client import health
        end = time.monotonic() + timeout
        last = "not listening yet"
        while time.monotonic() < end:
            if not self.alive():
                code = None if self.proc is None else self.proc.returncode
                raise self._fail(f"exited with {code} during start-up")
            if port_open(self.config.host, self.health_port or self.port):
                try:
                    status = self.health()
                    if status == health.SERVING:
                        return
                    last = f"health {health.STATUS_NAMES.get(status, status)}"
                except grpc.RpcError as e:
                    last = f"{e.code().name}: {e.details()}"
            time.sleep(0.05)
        raise self._fail(f"not SERVING after {timeout:.0f} s (last: {last})")

    def terminate(self) -> None:
        """SIGTERM: the replica drains (health NOT_SERVING, requests in flight finish, every
        resident session is written to the store) and exits 0."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)

    def wait_exit(self, timeout: float) -> Optional[int]:
        """The exit status, or None when still running after `timeout` seconds."""
        if self.proc is None:
            return None
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        if len(self.exit_codes) < self.starts:  # the first time this process is seen ended
            self.exit_codes.append(code)
        return code

    def stop(self, timeout: Optional[float] = None) -> int:
        """SIGTERM and wait (default: the shutdown grace + 30 s for writing sessions to the
        store); SIGKILL when it is still running then. Returns the exit status (negative:
        killed by that signal)."""
        if self.proc is None:
            raise ClusterError(f"{self.replica_id} was never started")
        if not self.alive():
            return self.wait_exit(0)
        self.terminate()
        code = self.wait_exit(self.config.shutdown_grace_s + 30.0 if timeout is None
                              else timeout)
        if code is None:
            self.proc.kill()
            code = self.wait_exit(30.0)
        return code

    def kill(self) -> int:
        """kill -9 (a crash: nothing drained, nothing flushed); returns once it is reaped."""
        if self.alive():
            self.proc.kill()
        return self.wait_exit(30.0)

    def metrics_text(self, timeout: float = 5.0) -> str:
        url = f"http://{self.metrics_target}/metrics"
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read().decode("utf-8")


# --- the router -------------------------------------------------------------------------------

@dataclasses.dataclass
class AccessEntry:
    """One line of the router's access log."""

    session: str  # x-session-id ("" when the call named none)
    upstream: str  # the replica that answered (the last one tried)
    tried: list[str]  # every replica tried, in order
    status: str  # the HTTP status nginx sent
    grpc_status: str  # the replica's grpc-status ("" when none reached nginx)
    uri: str  # /mnemo.v1.Service/Method


_LOG_FIELD = re.compile(r'(\w+)=(?:"([^"]*)"|(\S*))')


def parse_access_line(line: str) -> Optional[AccessEntry]:
    """An AccessEntry of a line in deploy/nginx's mnemo_grpc format, None for another line."""
    fields = {m.group(1): m.group(2) if m.group(2) is not None else m.group(3)
              for m in _LOG_FIELD.finditer(line)}
    if "uri" not in fields or "upstream" not in fields:
        return None
    # $upstream_addr: "a, b" when a connection to a failed first; "-" when none was tried.
    tried = [u.strip() for u in fields["upstream"].replace(" : ", ",").split(",")]
    tried = [u for u in tried if u and u != "-"]
    # nginx writes "-" for an empty value.
    grpc_status = [v for v in (fields.get("grpc_status"), fields.get("grpc_trailer_status"))
                   if v and v != "-"]
    session = fields.get("session", "")
    return AccessEntry(session="" if session == "-" else session,
                       upstream=tried[-1] if tried else "", tried=tried,
                       status=fields.get("status", ""),
                       grpc_status=grpc_status[0] if grpc_status else "", uri=fields["uri"])


class Router:
    """nginx in the foreground on a rendered deploy/nginx configuration in `prefix`."""

    def __init__(self, nginx: str, prefix: str, listen: str, upstreams: Sequence[str],
                 **render_options):
        self.nginx = nginx
        self.prefix = os.path.abspath(prefix)
        self.listen = listen
        self.upstreams = list(upstreams)
        self.render_options = render_options
        self.proc: Optional[subprocess.Popen] = None
        self.access_log = os.path.join(self.prefix, "access.log")
        self.error_log = os.path.join(self.prefix, "error.log")

    @property
    def target(self) -> str:
        return self.listen

    def _fail(self, message: str) -> ClusterError:
        return ClusterError(f"nginx ({self.listen}): {message}\n--- {self.error_log} (tail)\n"
                            f"{_tail(self.error_log)}")

    def _render(self) -> None:
        nginx_render.write_config(self.listen, self.upstreams, self.prefix,
                                  **self.render_options)
        check = subprocess.run(nginx_render.nginx_command(self.nginx, self.prefix)[:-2] + ["-t"],
                               capture_output=True, text=True, timeout=30)
        if check.returncode != 0:
            raise self._fail(f"the rendered configuration is refused:\n{check.stderr}")

    def start(self, timeout: float = 30.0) -> None:
        os.makedirs(self.prefix, exist_ok=True)
        self._render()
        with open(os.path.join(self.prefix, "stdout.log"), "ab") as out:
            self.proc = subprocess.Popen(nginx_render.nginx_command(self.nginx, self.prefix),
                                         stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        host, port = self.listen.rsplit(":", 1)
        end = time.monotonic() + timeout
        while not port_open(host.strip("[]"), int(port)):
            if self.proc.poll() is not None:
                raise self._fail(f"exited with {self.proc.returncode} during start-up")
            if time.monotonic() > end:
                raise self._fail(f"not listening after {timeout:.0f} s")
            time.sleep(0.05)

    def _error_log(self) -> str:
        try:
            with open(self.error_log, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def _workers(self) -> tuple[set[str], set[str]]:
        """(pids of every worker started, pids of workers told to shut down), from the log."""
        text = self._error_log()
        started = set(re.findall(r"start worker process (\d+)", text))
        leaving = set(re.findall(r"(\d+)#\d+: gracefully shutting down", text))
        return started, leaving

    def set_upstreams(self, upstreams: Sequence[str], timeout: float = 30.0) -> None:
        """Re-renders the configuration for `upstreams` and reloads nginx (SIGHUP). Returns once
        the new workers run and the old ones have stopped accepting connections: a connection
        opened from then on uses the new list. Calls in flight, and further calls on a
        connection opened before, stay with an old worker until that connection is idle."""
        self.upstreams = list(upstreams)
        self._render()
        old, _ = self._workers()
        self.proc.send_signal(signal.SIGHUP)
        workers = int(self.render_options.get("worker_processes", 1))
        end = time.monotonic() + timeout
        while True:
            started, leaving = self._workers()
            if len(started - old) >= workers and old <= leaving:
                return
            if self.proc.poll() is not None:
                raise self._fail(f"exited with {self.proc.returncode} on reload")
            if time.monotonic() > end:
                raise self._fail(f"the reload did not replace the workers in {timeout:.0f} s")
            time.sleep(0.02)

    def access_entries(self) -> list[AccessEntry]:
        """Every call logged so far (nginx writes a line when a call ends)."""
        try:
            with open(self.access_log, encoding="utf-8", errors="replace") as f:
                lines = f.readlines()
        except FileNotFoundError:
            return []
        return [e for e in map(parse_access_line, lines) if e is not None]

    def entries_after(self, start: int, count: int, timeout: float = 5.0) -> list[AccessEntry]:
        """The `count` calls logged after the first `start` entries. nginx writes a call's line
        just after its last frame, so a client may see the answer a moment before: waits up to
        `timeout` s for them; raises ClusterError when they do not come."""
        end = time.monotonic() + timeout
        while True:
            entries = self.access_entries()[start:]
            if len(entries) >= count:
                return entries[:count]
            if time.monotonic() > end:
                raise self._fail(f"{len(entries)} of {count} calls logged after {timeout:.0f} s")
            time.sleep(0.01)

    def stop(self, timeout: float = 15.0) -> Optional[int]:
        """Graceful stop (SIGQUIT: calls in flight finish), SIGKILL after `timeout`."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGQUIT)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


# --- Prometheus -------------------------------------------------------------------------------

class Prometheus:
    """A Prometheus server scraping every replica's /metrics (file-discovered targets, so
    replicas joining and leaving need no restart), with `rules_file` loaded when given."""

    def __init__(self, binary: str, workdir: str, port: int, scrape_interval: str = "1s",
                 rules_file: Optional[str] = None, host: str = "127.0.0.1"):
        self.binary = binary
        self.workdir = os.path.abspath(workdir)
        self.port = port
        self.host = host
        self.url = f"http://{host}:{port}"
        self.scrape_interval = scrape_interval
        self.rules_file = rules_file
        self.targets_path = os.path.join(self.workdir, "targets.json")
        self.config_path = os.path.join(self.workdir, "prometheus.yml")
        self.log_path = os.path.join(self.workdir, "prometheus.log")
        self.proc: Optional[subprocess.Popen] = None

    def _fail(self, message: str) -> ClusterError:
        return ClusterError(f"prometheus ({self.url}): {message}\n--- {self.log_path} (tail)\n"
                            f"{_tail(self.log_path)}")

    def set_targets(self, replicas: Iterable[Replica]) -> None:
        """Scrape exactly these replicas (labels: replica=<id>); written atomically."""
        groups = [{"targets": [r.metrics_target], "labels": {"replica": r.replica_id}}
                  for r in replicas]
        tmp = self.targets_path + ".new"
        with open(tmp, "w") as f:
            json.dump(groups, f)
        os.replace(tmp, self.targets_path)

    def start(self, replicas: Iterable[Replica], timeout: float = 60.0) -> None:
        os.makedirs(self.workdir, exist_ok=True)
        self.set_targets(replicas)
        lines = ["global:", f"  scrape_interval: {self.scrape_interval}",
                 f"  evaluation_interval: {self.scrape_interval}"]
        if self.rules_file:
            lines += ["rule_files:", f"  - {json.dumps(self.rules_file)}"]
        lines += ["scrape_configs:", "  - job_name: mnemo",
                  "    file_sd_configs:", f"      - files: [{json.dumps(self.targets_path)}]",
                  "        refresh_interval: 1s"]
        with open(self.config_path, "w") as f:
            f.write("\n".join(lines) + "\n")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, f"--config.file={self.config_path}",
                 f"--storage.tsdb.path={os.path.join(self.workdir, 'tsdb')}",
                 f"--web.listen-address={self.host}:{self.port}"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        end = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise self._fail(f"exited with {self.proc.returncode} during start-up")
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=2):
                    return
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            if time.monotonic() > end:
                raise self._fail(f"not ready after {timeout:.0f} s")
            time.sleep(0.2)

    def api(self, path: str, **params: str) -> dict:
        """GET /api/v1/<path>; the decoded JSON body (status "success" or "error"), also for
        an HTTP 4xx/5xx answer (Prometheus reports bad queries as 400 with a JSON body)."""
        url = f"{self.url}/api/v1/{path}?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return json.load(response)
        except urllib.error.HTTPError as e:
            body = e.read().decode("utf-8", errors="replace")
            try:
                return json.loads(body)
            except ValueError:
                return {"status": "error", "error": f"HTTP {e.code}: {body[:500]}"}

    def query(self, expr: str) -> dict:
        """/api/v1/query of `expr` at the current time: the whole JSON answer."""
        return self.api("query", query=expr)

    def samples(self, expr: str) -> list[tuple[dict, float]]:
        """(labels, value) of an instant vector `expr`; raises ClusterError on a failed query."""
        body = self.query(expr)
        if body.get("status") != "success":
            raise self._fail(f"query {expr!r} failed: {body}")
        return [(r["metric"], float(r["value"][1])) for r in body["data"]["result"]]

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# --- the cluster ------------------------------------------------------------------------------

@dataclasses.dataclass
class ClusterConfig:
    """A cluster's processes. Ports 0 are chosen free at start; otherwise replica i (from 0)
    listens on base_port + i and serves metrics on metrics_base_port + i."""

    server_bin: str
    workdir: str  # logs, nginx's prefix, Prometheus's data
    models: list[str] = dataclasses.field(default_factory=lambda: [f"default={DEFAULT_MODEL}"])
    store_dir: str = ""  # default: <workdir>/store
    replicas: int = 3
    host: str = "127.0.0.1"
    router_port: int = 0
    base_port: int = 0
    metrics_base_port: int = 0
    durability: str = "sync"
    shutdown_grace_s: float = 5.0
    identity: bool = True
    # TLS everywhere (ClusterTls): clients to nginx, nginx and replicas to replicas (mTLS).
    tls: bool = False
    # Replica i's plaintext health listener on health_base_port + i (0: free ports); replicas
    # have one only with TLS or a base port.
    health_base_port: int = 0
    # An auth file (docs/server-api.md "Tenants"): the replicas serve a copy with an admin tenant
    # REPLICA_TENANT added (its token generated; sync_auth() applies later edits of this file).
    auth_file: str = ""
    extra_flags: list[str] = dataclasses.field(default_factory=list)
    env: Optional[dict[str, str]] = None
    nginx_bin: str = ""  # default: nginx on PATH, else /usr/sbin/nginx
    nginx_options: dict = dataclasses.field(default_factory=dict)  # render.render() keywords
    prometheus_bin: Optional[str] = "/usr/bin/prometheus"  # None: no Prometheus
    prometheus_port: int = 0
    scrape_interval: str = "1s"
    rules_file: Optional[str] = None  # default: deploy/prometheus/mnemo-rules.yml if present


class ClusterTls:
    """The cluster's private CA (<directory>/ca.pem, what clients trust) and what it signs: the
    router's server certificate (localhost and `host`), the router's client certificate toward
    the replicas, and a certificate per replica (server and client use: replicas call each
    other; named REPLICA_TLS_NAME, which the router checks, and `host`). Made anew each time;
    the CA's key never leaves memory."""

    def __init__(self, directory: str, host: str):
        try:
            from deploy.local.certs import Ca
        except ImportError as e:
            raise ClusterError(f"TLS needs the Python package cryptography (Debian: apt-get "
                               f"install -y python3-cryptography): {e}") from None
        self.directory = os.path.abspath(directory)
        self.host = host
        self.ca = Ca(self.directory, name="mnemo local CA", organization="mnemo local", days=30)
        self.ca_file = self.ca.pem
        self.server_name = "localhost"
        hosts = ["localhost"] + ([host] if host != "localhost" else [])
        self.router = self.ca.issue("router", "mnemo-router", hosts=hosts)
        self.router_client = self.ca.issue("router-client", "mnemo-router", server=False)

    def replica(self, replica_id: str) -> ReplicaTls:
        leaf = self.ca.issue(f"replica-{replica_id}", f"mnemo-replica-{replica_id}", client=True,
                             hosts=[REPLICA_TLS_NAME, self.host])
        return ReplicaTls(cert=leaf.cert, key=leaf.key, client_ca=self.ca_file)

    def nginx_options(self) -> dict[str, str]:
        """deploy/nginx/render.py keywords: TLS toward clients, mTLS toward the replicas."""
        return {"tls_cert": self.router.cert, "tls_key": self.router.key,
                "upstream_tls_ca": self.ca_file, "upstream_tls_name": REPLICA_TLS_NAME,
                "upstream_tls_cert": self.router_client.cert,
                "upstream_tls_key": self.router_client.key}


class ClusterAuth:
    """The replicas' auth file: a copy of the operator's (`source`) with an admin tenant
    REPLICA_TENANT added, whose token (generated) the replicas send when they ask each other for
    a hand-off. The copy is <workdir>/auth.json, the token <workdir>/replica-token (both readable
    by the owner only)."""

    def __init__(self, source: str, workdir: str):
        self.source = os.path.abspath(source)
        self.path = os.path.join(workdir, "auth.json")
        self.token_file = os.path.join(workdir, "replica-token")
        token = secrets.token_urlsafe(32)
        _write_private(self.token_file, (token + "\n").encode())
        self._hash = hashlib.sha256(token.encode()).hexdigest()
        self._seen: Optional[bytes] = None  # the contents the copy was made from
        self._refused: Optional[bytes] = None  # reported once, not every call
        self.sync()

    def sync(self) -> bool:
        """Writes the copy again when `source` changed since the last call (the replicas re-read
        it within a second); True when it did. Raises ClusterError when `source` cannot be read,
        is not a JSON object with a "tenants" list, or already names REPLICA_TENANT (once per such
        contents); the copy is then left as it was. Whatever else the server refuses, it logs
        and ignores."""
        try:
            with open(self.source, "rb") as f:
                data = f.read()
        except OSError as e:
            raise ClusterError(f"auth file {self.source}: {e}") from None
        if data in (self._seen, self._refused):
            return False
        try:
            doc = json.loads(data)
            problem = ""
        except ValueError as e:
            doc, problem = None, f"not JSON: {e}"
        tenants = doc.get("tenants") if isinstance(doc, dict) else None
        if not problem and not isinstance(tenants, list):
            problem = "no \"tenants\" list"
        elif not problem and any(isinstance(t, dict) and t.get("name") == REPLICA_TENANT
                                 for t in tenants):
            problem = (f"the tenant name {REPLICA_TENANT!r} is the harness's (the replicas' "
                       "admin tenant): rename yours")
        if problem:
            self._refused = data
            raise ClusterError(f"auth file {self.source}: {problem}")
        doc = dict(doc, tenants=tenants + [
            {"name": REPLICA_TENANT, "admin": True, "token_sha256": [self._hash]}])
        _write_private(self.path, (json.dumps(doc, indent=2) + "\n").encode())
        self._seen = data
        return True


def find_nginx(explicit: str = "") -> str:
    """The nginx binary: `explicit`, else nginx on PATH, else /usr/sbin/nginx (Debian's)."""
    for candidate in (explicit, shutil.which("nginx") or "", "/usr/sbin/nginx"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise ClusterError("nginx is not installed (Debian: apt-get install -y nginx; "
                       "docs/deploy.md)")


class Cluster:
    """N replicas + nginx + (optional) Prometheus. ``start()`` brings everything up and waits
    until every replica is SERVING; ``close()`` stops everything (replicas with SIGTERM, so they
    drain to the store) and returns the replicas' exit codes. Use as a context manager.

    Membership changes (``add_replica``, ``remove_replica``, ``restart``) are made from one
    thread at a time; clients may run concurrently through ``router_target``.
    """

    def __init__(self, config: ClusterConfig):
        self.config = config
        self.workdir = os.path.abspath(config.workdir)
        os.makedirs(self.workdir, exist_ok=True)
        store = config.store_dir or os.path.join(self.workdir, "store")
        os.makedirs(store, exist_ok=True)
        self.tls = ClusterTls(os.path.join(self.workdir, "tls"), config.host) if config.tls \
            else None
        self.auth = ClusterAuth(config.auth_file, self.workdir) if config.auth_file else None
        self.replica_config = ReplicaConfig(
            binary=config.server_bin, models=list(config.models), store_dir=store,
            workdir=self.workdir, host=config.host, durability=config.durability,
            shutdown_grace_s=config.shutdown_grace_s, identity=config.identity,
            auth_file=self.auth.path if self.auth else "",
            replica_token_file=self.auth.token_file if self.auth else "",
            extra_flags=list(config.extra_flags), env=config.env)
        self.replicas: list[Replica] = []  # members, in joining order
        self.departed: list[Replica] = []  # replicas that left (stopped)
        self._next_index = 0
        self.router: Optional[Router] = None
        self.prometheus: Optional[Prometheus] = None
        self._lock = threading.Lock()

    # -- addresses --

    @property
    def router_target(self) -> str:
        return self.router.target

    @property
    def store_dir(self) -> str:
        return self.replica_config.store_dir

    def _new_replica(self) -> Replica:
        i = self._next_index
        self._next_index += 1
        c = self.config
        port = c.base_port + i if c.base_port else free_port(c.host)
        metrics_port = c.metrics_base_port + i if c.metrics_base_port else free_port(c.host)
        health_port = 0
        if c.health_base_port:
            health_port = c.health_base_port + i
        elif c.tls:
            health_port = free_port(c.host)
        replica_id = f"r{i + 1}"
        return Replica(self.replica_config, replica_id, port, metrics_port, health_port,
                       self.tls.replica(replica_id) if self.tls else None)

    # -- life cycle --

    def check_server(self) -> None:
        """Raises ClusterError when the server binary is missing or (with identity) lacks the
        replica flags."""
        binary = self.config.server_bin
        if not os.access(binary, os.X_OK):
            raise ClusterError(f"no mnemo-server at {binary} (cmake --build --preset release "
                               "--target mnemo-server)")
        needed = {"--replica-id", "--advertise"} if self.config.identity else set()
        if self.config.tls:
            needed |= {"--tls-cert", "--tls-client-ca", "--health-listen"}
        if self.config.auth_file:
            needed |= {"--auth-file", "--replica-token-file"}
        missing = needed - server_flags(binary) if needed else set()
        if missing:
            raise ClusterError(
                f"{binary} has no {' or '.join(sorted(missing))} flag: it predates what this "
                "cluster asks for (replicas sharing a store: DESIGN.md §3; TLS, tenants: "
                "docs/server-api.md)")

    def start(self, timeout: float = 120.0) -> "Cluster":
        self.check_server()
        fresh = [self._new_replica() for _ in range(self.config.replicas)]
        for r in fresh:  # all at once: loading the model overlaps
            r.start()
        self.replicas.extend(fresh)
        for r in fresh:
            r.wait_serving(timeout)
        c = self.config
        router_port = c.router_port or free_port(c.host)
        options = dict(self.tls.nginx_options() if self.tls else {}, **c.nginx_options)
        self.router = Router(find_nginx(c.nginx_bin), os.path.join(self.workdir, "nginx"),
                             f"{c.host}:{router_port}", [r.target for r in self.replicas],
                             **options)
        self.router.start()
        if c.prometheus_bin:
            if not os.access(c.prometheus_bin, os.X_OK):
                raise ClusterError(f"no Prometheus at {c.prometheus_bin} (Debian: apt-get "
                                   "install -y prometheus)")
            rules = c.rules_file if c.rules_file is not None else (
                RULES_FILE if os.path.exists(RULES_FILE) else None)
            self.prometheus = Prometheus(c.prometheus_bin, os.path.join(self.workdir,
                                                                        "prometheus"),
                                         c.prometheus_port or free_port(c.host),
                                         c.scrape_interval, rules, c.host)
            self.prometheus.start(self.replicas)
        return self

    def _membership_changed(self) -> None:
        self.router.set_upstreams([r.target for r in self.replicas])
        if self.prometheus is not None:
            self.prometheus.set_targets(self.replicas)

    def add_replica(self, timeout: float = 60.0) -> Replica:
        """A new replica (next id, new ports): started, SERVING, then added to the router and
        to Prometheus's targets."""
        r = self._new_replica()
        r.start()
        r.wait_serving(timeout)
        self.replicas.append(r)
        self._membership_changed()
        return r

    def remove_replica(self, replica: Replica, stop: bool = True) -> Optional[int]:
        """Takes `replica` out of the router first (new calls go elsewhere), then stops it with
        SIGTERM (it drains its sessions to the store); returns its exit code. With `stop`
        False it keeps running, out of the ring, holding its sessions until the replicas they
        now hash to take them over (hand-offs); ``close()`` stops it; returns None."""
        self.replicas.remove(replica)
        self.departed.append(replica)
        self._membership_changed()
        return replica.stop() if stop else None

    def restart(self, replica: Replica, how: str = "term", timeout: float = 60.0,
                down_s: float = 0.0) -> int:
        """Restarts `replica` on the same ports and id: ``how`` "term" (SIGTERM, wait for its
        exit: a rolling update) or "kill" (kill -9: a crash). The router keeps listing it; calls
        routed to it meanwhile are refused at connect and go to the next replica on the ring.
        Waits `down_s` before starting the replacement; returns the old process's exit code."""
        if how == "term":
            code = replica.stop()
        elif how == "kill":
            code = replica.kill()
        else:
            raise ValueError(f"how must be 'term' or 'kill', got {how!r}")
        if down_s:
            time.sleep(down_s)
        replica.start()
        replica.wait_serving(timeout)
        return code

    def close(self) -> dict[str, int]:
        """Stops the router, every replica (SIGTERM, in parallel: each drains to the store) and
        Prometheus; returns {replica id: exit code} of the replicas that were running (members,
        and those removed without stopping)."""
        codes: dict[str, int] = {}
        if self.router is not None:
            self.router.stop()
        running = [r for r in self.replicas + self.departed if r.alive()]
        for r in running:
            r.terminate()
        for r in running:
            codes[r.replica_id] = r.stop()
        if self.prometheus is not None:
            self.prometheus.stop()
        return codes

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def sync_auth(self) -> bool:
        """Applies an edit of the configured auth file to the replicas' copy (ClusterAuth.sync);
        False without an auth file or when nothing changed."""
        return self.auth.sync() if self.auth is not None else False

    def client_flags(self) -> list[str]:
        """The mnemo_client command-line flags that reach the router (target, TLS), without the
        token (--token-file, one of the auth file's tenants')."""
        flags = ["--target", self.router_target]
        if self.tls is not None:
            flags += ["--tls-ca", self.tls.ca_file]
        return flags

    def describe(self) -> str:
        lines = [f"router (gRPC, nginx): {self.router_target}"
                 + (" (TLS; replicas behind it: mTLS)" if self.tls else "")]
        if self.tls is not None:
            lines.append(f"  trust {self.tls.ca_file}; the router's certificate names "
                         f"{self.tls.server_name} and {self.config.host}")
        if self.auth is not None:
            lines.append(f"tenants: {self.auth.source} (replicas serve {self.auth.path}, with "
                         f"admin tenant {REPLICA_TENANT!r}: token in {self.auth.token_file})")
        if self.prometheus is not None:
            lines.append(f"Prometheus: {self.prometheus.url}")
        for r in self.replicas:
            health = f", health {r.health_target}" if r.health_port else ""
            lines.append(f"replica {r.replica_id}: gRPC {r.target}{health}, metrics "
                         f"http://{r.metrics_target}/metrics, log {r.log_path}")
        lines.append(f"session store: {self.store_dir}")
        return "\n".join(lines)


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.1,
               what: str = "condition") -> None:
    """Polls `predicate` until true; raises ClusterError naming `what` after `timeout` s."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise ClusterError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
