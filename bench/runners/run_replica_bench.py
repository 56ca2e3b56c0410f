#!/usr/bin/env python3
"""Replicas behind the router: what nginx costs a request, and how long a session takes to move
between replicas, in one run on one machine (deploy/local/cluster.py runs the processes; the
router is deploy/nginx/mnemo.conf.template).

* router: closed-loop load of --concurrency clients (threads of the Python client), each on its
  own session of the shipped teacher, for --seconds per point, of two request kinds: a small
  greedy Generate (--gen-tokens tokens, SCRATCH: the state stays as it is) and a Score of
  --score-tokens tokens without commit. Three arms on the same replicas' processes:
  - ``direct``: the clients call one replica directly (the limit: a router only adds);
  - ``router_1``: the same replica, through nginx (nginx's own cost, nothing else differs);
  - ``router_3``: three replicas through nginx, each session on the replica its id hashes to
    (the sessions are made on every replica and only those nginx routes back to their maker
    are kept, so no session moves during the measurement).
  Each point: requests/s, generated or scored tokens/s, latency p50 / p99. Alongside, the
  latency of a no-op call (ListModels) direct and through nginx: the router's per-call
  overhead. Derived: router_1 ÷ direct throughput and p99 differences.
* handoff (needs replicas with --replica-id/--advertise): per model (the teacher and the
  12-layer benchmark model of run_cpu_bench.py at memory 512), --handoffs SYNC sessions with a
  full memory are made on replica A; each is then called directly on replica B, which has A
  hand it off (A writes a snapshot to the shared store and lets go) and restores it. The first
  request's latency on B less a resident request's is the move; the replicas' own
  ``mnemo_session_handoffs_total`` and ``mnemo_session_restores_total`` confirm what happened
  (``server_counted``: [hand-offs, restores] per replica). Limit, in the same run: the state's bytes written with fsync and read back at the
  disk's measured bandwidth (dd, run_durability_bench's).

Output: JSON lines in --out-dir (replica-<UTC time>-<commit>.jsonl) and a summary on stdout.

    PYTHONPATH=python:.:clients/python:build/release/python \\
        .venv/bin/python -m bench.runners.run_replica_bench [--parts router,handoff] [--quick]
"""

import argparse
import os
import shutil
import statistics
import sys
import threading
import time

from bench.benchlib import ROOT
from bench.benchlib.checkpoints import ensure_checkpoints
from bench.benchlib.machine import Log, QuietWait, bench_env, machine_info
from bench.benchlib.process import python_env
from bench.benchlib.results import ResultWriter, result_path

log = Log("run_replica_bench")
quiet = QuietWait()
MIB = 1 << 20


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * (len(values) - 1) + 0.5))]


def doc_ids(n, vocab):
    return [(7 * i + 3) % (vocab - 10) + 5 for i in range(n)]


def cluster_for(args, workdir, model_dir, replicas, identity, durability="none"):
    from deploy.local.cluster import Cluster, ClusterConfig
    shutil.rmtree(workdir, ignore_errors=True)
    env = dict(args.env)
    # One BLAS thread per replica (the harness's default for several replicas on few cores);
    # the direct arm uses the same replica, so both arms run under the same setting.
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    config = ClusterConfig(server_bin=os.path.join(args.build, "mnemo-server"), workdir=workdir,
                           models=[f"m={model_dir}"], replicas=replicas, durability=durability,
                           shutdown_grace_s=5.0, identity=identity, env=env,
                           extra_flags=["--max-sessions", "100000"], prometheus_bin=None)
    return Cluster(config).start()


# --- the router's cost ------------------------------------------------------------------------

def closed_loop(target, sessions, request, seconds):
    """Each session's thread runs request(client, session id) back to back for `seconds`;
    returns (latencies in s, units done, wall seconds)."""
    from mnemo_client import MnemoClient
    latencies, units = [], [0]
    lock = threading.Lock()
    start_gate = threading.Barrier(len(sessions) + 1)
    end = [0.0]

    errors = []

    def run(sid):
        try:
            with MnemoClient(target, timeout=120) as client:
                request(client, sid)  # warm the channel
                start_gate.wait(timeout=300)
                mine, n = [], 0
                while time.perf_counter() < end[0]:
                    t = time.perf_counter()
                    n += request(client, sid)
                    mine.append(time.perf_counter() - t)
        except BaseException as e:  # noqa: BLE001 — re-raised by the caller
            errors.append(e)
            start_gate.abort()
            return
        with lock:
            latencies.extend(mine)
            units[0] += n

    threads = [threading.Thread(target=run, args=(s,)) for s in sessions]
    for t in threads:
        t.start()
    end[0] = time.perf_counter() + 1e9
    try:
        start_gate.wait(timeout=300)
    except threading.BrokenBarrierError:
        pass
    t0 = time.perf_counter()
    end[0] = t0 + seconds
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"a client failed: {errors[0]!r}") from errors[0]
    return latencies, units[0], time.perf_counter() - t0


def requests_of(args, vocab):
    def generate(client, sid):
        r = client.generate_result(sid, None, max_tokens=args.gen_tokens, temperature=0,
                                   ignore_eos=True, commit="scratch")
        return len(r.ids)

    def score(client, sid):
        return len(client.score(sid, ids=doc_ids(args.score_tokens, vocab)).tokens)

    return {"generate": generate, "score": score}


def owned_sessions(cluster, count, doc_tokens, vocab):
    """`count` sessions with a document, each made on the replica nginx routes its id to."""
    from mnemo_client import MnemoClient
    kept = []
    clients = {r.target: MnemoClient(r.target, timeout=120) for r in cluster.replicas}
    with MnemoClient(cluster.router_target, timeout=30) as via_router:
        for _ in range(40 * count):
            for target, client in clients.items():
                sid = client.create_session().id
                before = len(cluster.router.access_entries())
                via_router.get_session(sid)
                entry = cluster.router.entries_after(before, 1)[0]
                if entry.upstream == target and len(kept) < count:
                    client.ingest(sid, [doc_ids(doc_tokens, vocab)])
                    kept.append(sid)
                else:  # (a replica server may have taken it over: delete where it is now)
                    via_router.delete_session(sid)
            if len(kept) >= count:
                break
    for client in clients.values():
        client.close()
    if len(kept) < count:
        raise SystemExit(f"only {len(kept)} of {count} sessions hash to their maker")
    return kept


def router_points(args, model_dir, name):
    from mnemo_client import MnemoClient
    lines = []
    identity = args.identity
    cluster = cluster_for(args, os.path.join(args.workdir, "router"), model_dir, 3, identity)
    try:
        with MnemoClient(cluster.replicas[0].target) as c:
            model = c.model()
        vocab, doc = model.vocab_size, model.memory_tokens + 1
        one = cluster.replicas[0]
        requests = requests_of(args, vocab)
        # The same replica directly and through nginx: nginx listing only that replica.
        with MnemoClient(one.target, timeout=120) as c:
            single = []
            for _ in range(max(args.concurrency)):
                sid = c.create_session().id
                c.ingest(sid, [doc_ids(doc, vocab)])
                single.append(sid)
        spread = owned_sessions(cluster, max(args.concurrency), doc, vocab)
        all_targets = [r.target for r in cluster.replicas]

        # The no-op call: the router's per-call overhead.
        cluster.router.set_upstreams([one.target])
        for arm, target in (("direct", one.target), ("router_1", cluster.router_target)):
            with MnemoClient(target, timeout=30) as c:
                for _ in range(20):
                    c.models()
                times = []
                for _ in range(args.noop_calls):
                    t = time.perf_counter()
                    c.models()
                    times.append(time.perf_counter() - t)
            lines.append({"impl": "mnemo-server", "figure": "router_noop", "arm": arm,
                          "calls": len(times),
                          "ms_p50": statistics.median(times) * 1e3,
                          "ms_p99": percentile(times, 0.99) * 1e3})
            log(f"no-op {arm}: p50 {lines[-1]['ms_p50']:.3f} ms, p99 {lines[-1]['ms_p99']:.3f}")

        for kind, request in requests.items():
            for n in args.concurrency:
                for arm in ("direct", "router_1", "router_3"):
                    if arm == "router_3":
                        cluster.router.set_upstreams(all_targets)
                        target, sessions = cluster.router_target, spread[:n]
                    else:
                        cluster.router.set_upstreams([one.target])
                        target = one.target if arm == "direct" else cluster.router_target
                        sessions = single[:n]
                    quiet(20)
                    lat, units, wall = closed_loop(target, sessions, request, args.seconds)
                    line = {"impl": "mnemo-server", "figure": "router_load", "model": name,
                            "request": kind, "arm": arm, "concurrency": n,
                            "replicas": 3 if arm == "router_3" else 1,
                            "requests": len(lat), "seconds": wall,
                            "requests_per_s": len(lat) / wall, "tokens_per_s": units / wall,
                            "ms_p50": statistics.median(lat) * 1e3,
                            "ms_p99": percentile(lat, 0.99) * 1e3}
                    lines.append(line)
                    log(f"{kind} c={n} {arm}: {line['requests_per_s']:.1f} req/s, "
                        f"{line['tokens_per_s']:.0f} tok/s, p50 {line['ms_p50']:.1f} ms, "
                        f"p99 {line['ms_p99']:.1f} ms")
    finally:
        cluster.close()
    by_key = {(l["request"], l["concurrency"], l["arm"]): l for l in lines
              if l["figure"] == "router_load"}
    for (kind, n, arm), line in list(by_key.items()):
        if arm == "direct":
            continue
        base = by_key[(kind, n, "direct")]
        lines.append({"impl": "derived", "figure": "router_vs_direct", "request": kind,
                      "concurrency": n, "arm": arm,
                      "throughput_fraction": line["requests_per_s"] / base["requests_per_s"],
                      "p50_added_ms": line["ms_p50"] - base["ms_p50"],
                      "p99_added_ms": line["ms_p99"] - base["ms_p99"]})
    return lines


# --- hand-off ---------------------------------------------------------------------------------

def metric_sum(replica, name, **labels):
    total = 0.0
    for line in replica.metrics_text().splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        key, value = line.rsplit(" ", 1)
        if key.split("{")[0] != name:
            continue
        if all(f'{k}="{v}"' in key for k, v in labels.items()):
            total += float(value)
    return total


def handoff_points(args, model_dir, name):
    from mnemo_client import MnemoClient
    cluster = cluster_for(args, os.path.join(args.workdir, f"handoff-{name}"), model_dir, 2,
                          identity=True, durability="sync")
    a, b = cluster.replicas
    try:
        with MnemoClient(a.target, timeout=600) as ca, MnemoClient(b.target, timeout=600) as cb:
            model = ca.model()
            vocab, doc = model.vocab_size, model.memory_tokens + 1
            ids = []
            for _ in range(args.handoffs):
                sid = ca.create_session(durability="sync").id
                ca.ingest(sid, [doc_ids(doc, vocab)])
                ids.append(sid)
            quiet(30)
            before = {r.replica_id: (metric_sum(r, "mnemo_session_handoffs_total"),
                                     metric_sum(r, "mnemo_session_restores_total"))
                      for r in (a, b)}
            moves, resident = [], []
            for sid in ids:
                t = time.perf_counter()
                cb.score(sid, ids=[5])
                moves.append(time.perf_counter() - t)
                t = time.perf_counter()
                cb.score(sid, ids=[5])
                resident.append(time.perf_counter() - t)
            state = cb.get_session(ids[0]).state_bytes
            after = {r.replica_id: (metric_sum(r, "mnemo_session_handoffs_total"),
                                    metric_sum(r, "mnemo_session_restores_total"))
                     for r in (a, b)}
    finally:
        cluster.close()
    move_s = statistics.median(moves) - statistics.median(resident)
    line = {"impl": "mnemo-server", "figure": "handoff", "model": name, "sessions": len(ids),
            "state_bytes": state, "first_request_ms_p50": statistics.median(moves) * 1e3,
            "first_request_ms_max": max(moves) * 1e3,
            "resident_request_ms_p50": statistics.median(resident) * 1e3,
            "move_ms": move_s * 1e3, "move_mb_s": state / move_s / 1e6 if move_s > 0 else None,
            "server_counted": {rid: [after[rid][i] - before[rid][i] for i in (0, 1)]
                               for rid in after}}
    log(f"{name}: hand-off of {state / MIB:.2f} MiB: first request {line['first_request_ms_p50']:.1f}"
        f" ms vs resident {line['resident_request_ms_p50']:.1f} ms (server counted "
        f"[handoffs, restores] {line['server_counted']})")
    return [line]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.path.join(ROOT, "build", "release"))
    ap.add_argument("--parts", default="router,handoff")
    ap.add_argument("--models", default="teacher,bench", help="hand-off models")
    ap.add_argument("--concurrency", default="1,8")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--gen-tokens", type=int, default=8)
    ap.add_argument("--score-tokens", type=int, default=32)
    ap.add_argument("--noop-calls", type=int, default=500)
    ap.add_argument("--handoffs", type=int, default=5)
    ap.add_argument("--workdir", default=os.path.join(ROOT, "build", "replica-bench"))
    ap.add_argument("--quick", action="store_true", help="a smoke run: 3 s points, 2 hand-offs")
    ap.add_argument("--openblas-coretype", default="")
    ap.add_argument("--out-dir", default=os.path.join(ROOT, "bench", "results"))
    args = ap.parse_args(argv)
    if args.quick:
        args.seconds, args.handoffs, args.noop_calls = 3.0, 2, 200
    args.concurrency = [int(x) for x in args.concurrency.split(",")]
    parts = set(args.parts.split(","))
    args.env = python_env(bench_env(args.openblas_coretype), args.build)
    os.environ["PYTHONPATH"] = args.env["PYTHONPATH"]
    sys.path[:0] = [p for p in args.env["PYTHONPATH"].split(os.pathsep) if p not in sys.path]
    from deploy.local.cluster import server_flags
    server = os.path.join(args.build, "mnemo-server")
    if not os.access(server, os.X_OK):
        raise SystemExit(f"mnemo-server is missing in {args.build}: cmake --build --preset release")
    args.identity = {"--replica-id", "--advertise"} <= server_flags(server)
    if "handoff" in parts and not args.identity:
        raise SystemExit(f"{server} has no --replica-id/--advertise (no hand-off between "
                         "replicas): run --parts router, or build a server with replicas")
    os.makedirs(args.workdir, exist_ok=True)
    teacher = os.path.join(ROOT, "models", "teacher")
    path = result_path("replica", args.out_dir)
    with ResultWriter(path) as out:
        out.record(machine_info(args.env, replica_identity=args.identity,
                                nginx=shutil.which("nginx") or "/usr/sbin/nginx"))
        if "router" in parts:
            out.extend(router_points(args, teacher, "teacher"))
        if "handoff" in parts:
            from bench.runners.run_durability_bench import disk_points
            disk = out.extend(disk_points(args.workdir, 64, 1))
            models = {}
            if "teacher" in args.models:
                models["teacher"] = teacher
            if "bench" in args.models:
                _, ckpts = ensure_checkpoints(os.path.join(ROOT, "build", "bench-models"),
                                              sys.executable, log)
                models["bench"] = ckpts[512]
            for name, model_dir in models.items():
                for line in out.extend(handoff_points(args, model_dir, name)):
                    d = [x for x in disk if x["label"] == "state"][0]
                    write, read = d.get("write_fsync_mb_s"), d.get("read_direct_mb_s")
                    if write and read and line.get("move_ms"):
                        limit_ms = line["state_bytes"] / 1e6 * (1 / write + 1 / read) * 1e3
                        out.record({"impl": "derived", "figure": "handoff_vs_disk",
                                    "model": name, "limit_ms": limit_ms,
                                    "fraction": limit_ms / line["move_ms"]})

    print(f"results: {path}")
    for line in out.lines:
        fig = line.get("figure")
        if fig == "router_noop":
            print(f"no-op call {line['arm']:>8}: p50 {line['ms_p50']:.3f} ms, "
                  f"p99 {line['ms_p99']:.3f} ms")
        elif fig == "router_load":
            print(f"{line['request']:>8} c={line['concurrency']:<3} {line['arm']:>8}: "
                  f"{line['requests_per_s']:7.1f} req/s {line['tokens_per_s']:8.0f} tok/s  "
                  f"p50 {line['ms_p50']:7.2f} ms  p99 {line['ms_p99']:7.2f} ms")
        elif fig == "router_vs_direct":
            print(f"{line['request']:>8} c={line['concurrency']:<3} {line['arm']:>8} vs direct: "
                  f"throughput ×{line['throughput_fraction']:.3f}, p50 "
                  f"{line['p50_added_ms']:+.2f} ms, p99 {line['p99_added_ms']:+.2f} ms")
        elif fig == "handoff":
            print(f"hand-off {line['model']}: {line['state_bytes'] / MIB:.2f} MiB in "
                  f"{line['move_ms']:.1f} ms (first request p50 "
                  f"{line['first_request_ms_p50']:.1f} ms, resident "
                  f"{line['resident_request_ms_p50']:.1f} ms)")
        elif fig == "handoff_vs_disk":
            print(f"hand-off {line['model']}: disk limit {line['limit_ms']:.1f} ms, "
                  f"fraction {line['fraction']:.2f}")


if __name__ == "__main__":
    main()
