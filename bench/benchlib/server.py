"""A mnemo-server process on free loopback ports, for the server runners."""

import os
import signal
import socket
import subprocess
import time
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``mnemo-server`` of `build` serving `model_dir` as model "m" on loopback; started (and
    waited for: its /metrics answers) on construction, ended with SIGTERM by ``stop()``. Its
    output goes to ``<build>/server-bench-<port>.log``."""

    def __init__(self, build, model_dir, env, extra=()):
        self.port, self.metrics_port = free_port(), free_port()
        self.target = f"127.0.0.1:{self.port}"
        cmd = [os.path.join(build, "mnemo-server"), "--model", f"m={model_dir}",
               "--listen", self.target, "--metrics-listen", f"127.0.0.1:{self.metrics_port}",
               "--max-sessions", "100000", "--max-generate-tokens", "100000", *extra]
        self.log = open(os.path.join(build, f"server-bench-{self.port}.log"), "w")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                self.metrics()
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise SystemExit(f"mnemo-server exited {self.proc.returncode}; see "
                                     f"{self.log.name}")
                time.sleep(0.2)
        raise SystemExit("mnemo-server did not start")

    def metrics(self):
        """The server's Prometheus metrics as {name with labels: value}."""
        text = urllib.request.urlopen(
            f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)
        self.log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
