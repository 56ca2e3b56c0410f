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
* the PyTorch peer (Hugging Face TransfoXL, ``bench/peers/peer_pytorch.py``) decoding one session, for the
  benchmark model (the default model has no Hugging Face twin);
* the cost of moving a session's state to host memory and back (``--device-state-budget`` of one
  state, two sessions scored in turn) against the same requests with room for both, per MB.

Output: JSON lines in --out-dir (server_bench-<UTC time>-<commit>.jsonl) and a summary on stdout.

    .venv/bin/python -m bench.runners.run_server_bench [--seconds 10] [--sessions 1,8,32,128]
"""

import argparse
import json
import os
import subprocess
import sys

from bench.benchlib import ROOT
from bench.benchlib.checkpoints import ensure_checkpoints
from bench.benchlib.machine import Log, QuietWait, bench_env, machine_info
from bench.benchlib.process import python_env, run_json
from bench.benchlib.results import ResultWriter, result_path
from bench.benchlib.server import Server
from mnemo_checkpoint import read_config

log = Log("run_server_bench")
quiet = QuietWait()


def model_facts(model_dir):
    c = read_config(model_dir)
    return {k: c[k] for k in ("n_layer", "d_model", "n_head", "d_head", "d_inner", "vocab_size",
                              "mem_len")}


def load_points(args, build, model_dir, env, name):
    lines = []
    server = Server(build, model_dir, env)
    try:
        for n in args.sessions:
            quiet(30)
            before = server.metrics()
            # A document of one segment and a token: the segment is run at ingest and one token
            # stays pending, so every request measures decoding against a full memory rather
            # than re-running a pending tail (SCRATCH keeps nothing).
            doc_tokens = args.doc_tokens or model_facts(model_dir)["mem_len"] + 1
            out = run_json([os.path.join(build, "server_load"), "--target", server.target,
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
    lines = run_json([bench, "--model", model_dir, "--figure", "decode", "--runs", "3",
                      "--decode-steps", "32"], env, timeout=1800)
    for b in args.sessions:
        if b > 1:
            lines += run_json([bench, "--model", model_dir, "--figure", "batched-decode",
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
from mnemo_client import MnemoClient
with MnemoClient(sys.argv[1], timeout=600) as c:
    ids = [c.create_session().id for _ in range(2)]
    for s in ids:
        c.ingest(s, [[(7 * i) % 97 + 3 for i in range(int(sys.argv[2]))]])
    for s in ids:
        c.score(s, ids=[5, 6, 7])
    t0 = time.perf_counter()
    n = int(sys.argv[3])
    for i in range(n):
        c.score(ids[i % 2], ids=[5, 6, 7])
    print((time.perf_counter() - t0) / n)
"""
    client_env = python_env(env, build)
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
                    [python, "-c", "import json, sys\n"
                     "from mnemo_client import MnemoClient\n"
                     "with MnemoClient(sys.argv[1]) as c: "
                     "print(json.dumps(c.model().state_bytes_per_session))",
                     server.target], capture_output=True, text=True, check=True,
                    env=client_env).stdout))
            out = subprocess.run([python, "-c", script, server.target, "64",
                                  str(args.tier_requests)],
                                 capture_output=True, text=True, check=True, env=client_env)
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
    out = run_json([python, "-m", "bench.peers.peer_pytorch", "--impl",
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
    env = python_env(bench_env(args.openblas_coretype))
    python = sys.executable
    path = result_path("server_bench", args.out_dir)
    for tool in ("mnemo-server", "server_load", "mnemo_bench"):
        if not os.access(os.path.join(args.build, tool), os.X_OK):
            raise SystemExit(f"{tool} is missing in {args.build}: cmake --build --preset release")

    lines = [machine_info(env)]
    models = {}
    if "default" in args.models:
        tiny = os.path.join(ROOT, "build", "models", "tiny")
        if not os.path.isfile(os.path.join(tiny, "model.safetensors")):
            subprocess.run(["/usr/bin/python3", os.path.join(ROOT, "tools", "make_tiny_model.py"),
                            tiny], check=True, env=env)
        models["default"] = tiny
    hf_dir = None
    if "bench" in args.models:
        hf_dir, ckpts = ensure_checkpoints(os.path.join(ROOT, "build", "bench-models"),
                                           python, log)
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

    with ResultWriter(path) as out:
        out.extend(lines)

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
