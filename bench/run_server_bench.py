#!/usr/bin/env python3
"""mnemo-server under load, against the engine alone and the PyTorch peer, in one run.

For each model (the small default checkpoint of tools/make_tiny_model.py and the 12-layer
d512 benchmark model of run_cpu_bench.py) this starts the real ``mnemo-server`` on loopback and
drives it with ``server_load`` (C++, one thread per session: ingest a document, then generate
continuations back to back) at 1, 8, 32 and 128 concurrent sessions. Each point reports
generated tokens per second, time to first token and inter-token latency (p50, p99), and the
mean batch size the scheduler formed (from the server's own /metrics). Alongside, in the same
run and on the same weights:

* the engine alone (``mnemo_bench``): decode of one session, and batched decode of B sessions
  per Forward, the most a server could deliver with that batch;
* the PyTorch peer (Hugging Face TransfoXL, ``peer_pytorch.py``) decoding one session, for the
  benchmark model (the default model has no Hugging Face twin);
* the cost of moving a session's state to host memory and back (``--device-state-budget`` of one
  state, two sessions scored in turn) against the same requests with room for both, per MB.

Output: JSON lines in --out-dir (server_bench-<date>.jsonl) and a summary on stdout.

    .venv/bin/python bench/run_server_bench.py [--seconds 10] [--sessions 1,8,32,128]
"""

import argparse
import datetime
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run_cpu_bench as cpu  # noqa: E402  (shared helpers: env, checkpoints, machine info)

ROOT = cpu.ROOT


def log(msg):
    print(f"[run_server_bench] {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A mnemo-server process on loopback ports."""

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


def model_facts(model_dir):
    with open(os.path.join(model_dir, "config.json")) as f:
        c = json.load(f)
    return {k: c[k] for k in ("n_layer", "d_model", "n_head", "d_head", "d_inner", "vocab_size",
                              "mem_len")}


def load_points(args, build, model_dir, env, name):
    lines = []
    server = Server(build, model_dir, env)
    try:
        for n in args.sessions:
            cpu.wait_quiet(30)
            before = server.metrics()
            # A document of one segment and a token: the segment is run at ingest and one token
            # stays pending, so every request measures decoding against a full memory rather
            # than re-running a pending tail (SCRATCH keeps nothing).
            doc_tokens = args.doc_tokens or model_facts(model_dir)["mem_len"] + 1
            out = cpu.run_json([os.path.join(build, "server_load"), "--target", server.target,
                                "--sessions", str(n), "--seconds", str(args.seconds),
                                "--doc-tokens", str(doc_tokens),
                                "--max-tokens", str(args.max_tokens)], env,
                               timeout=args.seconds * 4 + 600)
            after = server.metrics()
            count = after["mnemo_batch_size_count"] - before["mnemo_batch_size_count"]
            total = after["mnemo_batch_size_sum"] - before["mnemo_batch_size_sum"]
            for line in out:
                line.update(model=name, mean_batch=round(total / count, 2) if count else 0)
                log(f"{name} sessions {n}: {line['tokens_per_s']:.1f} tok/s, ttft p50 "
                    f"{line['ttft_p50_ms']:.1f} ms, itl p50 {line['itl_p50_ms']:.2f} ms, "
                    f"mean batch {line['mean_batch']}")
            lines += out
    finally:
        server.stop()
    return lines


def engine_points(args, build, model_dir, env, name):
    bench = os.path.join(build, "mnemo_bench")
    lines = cpu.run_json([bench, "--model", model_dir, "--figure", "decode", "--runs", "3",
                          "--decode-steps", "32"], env, timeout=1800)
    for b in args.sessions:
        if b > 1:
            lines += cpu.run_json([bench, "--model", model_dir, "--figure", "batched-decode",
                                   "--batch", str(b), "--runs", "3", "--warmup", "1",
                                   "--decode-steps", "16"], env, timeout=3600)
    for line in lines:
        line["model"] = name
    return lines


def tier_cost(args, build, model_dir, env, name, python):
    """Mean Score latency when every request must promote its session (and demote the other)
    against the same requests with both sessions resident; the difference is the round trip."""
    script = r"""
import sys, time
sys.path[:0] = [sys.argv[1], sys.argv[2]]
from mnemo_client import MnemoClient
with MnemoClient(sys.argv[3], timeout=600) as c:
    ids = [c.create_session().id for _ in range(2)]
    for s in ids:
        c.ingest(s, [[(7 * i) % 97 + 3 for i in range(int(sys.argv[4]))]])
    for s in ids:
        c.score(s, ids=[5, 6, 7])
    t0 = time.perf_counter()
    n = int(sys.argv[5])
    for i in range(n):
        c.score(ids[i % 2], ids=[5, 6, 7])
    print((time.perf_counter() - t0) / n)
"""
    state = None
    results = {}
    for label in ("resident", "moving"):
        extra = []
        if label == "moving":
            extra = ["--device-state-budget", str(state)]
        server = Server(build, model_dir, env, extra)
        try:
            if state is None:
                state = int(json.loads(subprocess.run(
                    [python, "-c", "import sys; sys.path[:0]=[sys.argv[1], sys.argv[2]]\n"
                     "from mnemo_client import MnemoClient\n"
                     "import json\n"
                     "with MnemoClient(sys.argv[3]) as c: "
                     "print(json.dumps(c.model().state_bytes_per_session))",
                     os.path.join(build, "python"), os.path.join(ROOT, "clients", "python"),
                     server.target], capture_output=True, text=True, check=True).stdout))
            out = subprocess.run([python, "-c", script, os.path.join(build, "python"),
                                  os.path.join(ROOT, "clients", "python"), server.target,
                                  "64", str(args.tier_requests)],
                                 capture_output=True, text=True, check=True, env=env)
            results[label] = float(out.stdout.strip())
            moves = server.metrics()
        finally:
            server.stop()
    moved = sum(v for k, v in moves.items() if k.startswith("mnemo_session_tier_moves_total"))
    round_trip = results["moving"] - results["resident"]
    mb = state / 2**20
    return [{"impl": "mnemo-server", "figure": "tier_round_trip", "model": name,
             "state_bytes": state, "score_ms_resident": round(results["resident"] * 1e3, 3),
             "score_ms_promoting": round(results["moving"] * 1e3, 3),
             "round_trip_ms": round(round_trip * 1e3, 3),
             "round_trip_ms_per_mb": round(round_trip * 1e3 / mb, 4),
             "tier_moves": moved}]


def peer_points(args, hf_dir, ckpt, env, python):
    out = cpu.run_json([python, os.path.join(ROOT, "bench", "peer_pytorch.py"), "--impl",
                        "hf_transfo_xl", "--figure", "decode", "--hf-dir", hf_dir, "--ckpt-dir",
                        ckpt, "--mem", "512", "--runs", "2", "--decode-steps", "8"], env,
                       timeout=3600)
    for line in out:
        line["model"] = "bench"
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.path.join(ROOT, "build", "release"))
    ap.add_argument("--sessions", default="1,8,32,128",
                    type=lambda s: [int(x) for x in s.split(",")])
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--doc-tokens", type=int, default=0,
                    help="document tokens per session (default: the model's memory + 1)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--tier-requests", type=int, default=40)
    ap.add_argument("--models", default="default,bench")
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--openblas-coretype", default="")
    ap.add_argument("--out-dir", default=os.path.join(ROOT, "bench", "results"))
    args = ap.parse_args(argv)
    env = cpu.bench_env(args)
    python = sys.executable
    os.makedirs(args.out_dir, exist_ok=True)
    for tool in ("mnemo-server", "server_load", "mnemo_bench"):
        if not os.access(os.path.join(args.build, tool), os.X_OK):
            raise SystemExit(f"{tool} is missing in {args.build}: cmake --build --preset release")

    lines = [cpu.machine_info(env)]
    models = {}
    if "default" in args.models:
        tiny = os.path.join(ROOT, "build", "models", "tiny")
        if not os.path.isfile(os.path.join(tiny, "model.safetensors")):
            subprocess.run(["/usr/bin/python3", os.path.join(ROOT, "tools", "make_tiny_model.py"),
                            tiny], check=True)
        models["default"] = tiny
    hf_dir = None
    if "bench" in args.models:
        hf_dir, ckpts = cpu.ensure_checkpoints(os.path.join(ROOT, "build", "bench-models"),
                                               python)
        models["bench"] = ckpts[512]
    for name, model_dir in models.items():
        facts = model_facts(model_dir)
        log(f"model {name}: {facts}")
        lines.append({"impl": "model", "figure": "model_info", "model": name, **facts})
        lines += engine_points(args, args.build, model_dir, env, name)
        lines += load_points(args, args.build, model_dir, env, name)
        lines += tier_cost(args, args.build, model_dir, env, name, python)
    if hf_dir and not args.no_peer:
        lines += peer_points(args, hf_dir, models["bench"], env, python)

    stamp = datetime.datetime.utcnow().strftime("%Y%m%dT%H%M%SZ")
    path = os.path.join(args.out_dir, f"server_bench-{stamp}.jsonl")
    with open(path, "w") as f:
        for line in lines:
            f.write(json.dumps(line) + "\n")

    print(f"results: {path}")
    for name in models:
        load = {l["sessions"]: l for l in lines if l.get("figure") == "server_load"
                and l.get("model") == name}
        engine = {1 if l["figure"] == "decode" else l["batch"]: l["tokens_per_s"]["median"]
                  for l in lines if l.get("model") == name and l.get("impl") == "mnemo"
                  and l.get("figure") in ("decode", "batched-decode")}
        print(f"\n{name}: sessions  server tok/s  ×single  engine tok/s (B)  server/engine  "
              f"ttft p50/p99 ms  itl p50/p99 ms  mean batch")
        single = load.get(1, {}).get("tokens_per_s", 0)
        for n, l in sorted(load.items()):
            e = engine.get(n, 0)
            print(f"  {n:>5} {l['tokens_per_s']:>14.1f} {l['tokens_per_s'] / single if single else 0:>8.2f}"
                  f" {e:>17.1f} {l['tokens_per_s'] / e if e else 0:>14.2f}"
                  f"  {l['ttft_p50_ms']:.1f}/{l['ttft_p99_ms']:.1f}"
                  f"  {l['itl_p50_ms']:.2f}/{l['itl_p99_ms']:.2f}  {l['mean_batch']}")
        for l in lines:
            if l.get("figure") == "tier_round_trip" and l["model"] == name:
                print(f"  demote+promote round trip: {l['round_trip_ms']:.2f} ms for "
                      f"{l['state_bytes'] / 2**20:.2f} MiB = {l['round_trip_ms_per_mb']:.3f} ms/MiB")
    for l in lines:
        if l.get("impl") == "hf_transfo_xl":
            print(f"\nPyTorch peer (Hugging Face TransfoXL) decode, one session, bench model: "
                  f"{l['tokens_per_s']['median']:.1f} tok/s")


if __name__ == "__main__":
    main()
