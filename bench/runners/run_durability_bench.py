#!/usr/bin/env python3
"""Durable sessions: snapshot and restore throughput against the disk's own bandwidth, time to
first token by where a session's state lives, and what SYNC durability adds to a request, in
one run on one machine.

* The disk (in the store directory): sequential write with ``dd conv=fsync`` (what the store
  does: write, then fsync) and with ``oflag=direct``, and sequential read with ``iflag=direct``
  (nothing from the page cache), over --disk-mib MiB and over one state's size.
* Per model (the 12-layer benchmark model of run_cpu_bench.py, memory 512: a 24 MiB state; the
  shipped teacher): a real ``mnemo-server`` on a store in that directory.
  - snapshot: a SYNC session committing one scored token at a time, each commit writing the whole
    state (--snapshots times); MB/s from the server's own ``mnemo_session_snapshot_seconds`` and
    ``mnemo_session_snapshot_bytes{op="write"}``, and ExportSession's MB/s at the client;
  - restore: --restores SYNC sessions, the server restarted on the store, each file evicted from
    the page cache (posix_fadvise DONTNEED), then one request per session restores it; MB/s from
    ``…{op="read"}`` (read, checksum and rebuild the state);
  - both as a fraction of the disk's bandwidth (target ≥ 0.5);
  - time to first token of a one-token Generate on a session resident on the device, promoted
    from host memory, and restored from the store (``--device-state-budget`` and
    ``--host-state-budget`` of one state each, three sessions: always touching the same one keeps
    it resident, alternating two promotes, rotating three restores), with the server's own
    ``mnemo_time_to_first_token_seconds{state_source}`` counts as the check of which it was.
* The teacher: p50/p95 latency of a small Generate (4 tokens, KEEP_ALL) and of a Score with
  commit (8 tokens) on a SYNC session against the same on a NONE session, interleaved.

Output: JSON lines in --out-dir (durability-<UTC time>-<commit>.jsonl) and a summary on stdout.

    .venv/bin/python -m bench.runners.run_durability_bench [--store-dir DIR] [--quick]
"""

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

from bench.benchlib import ROOT
from bench.benchlib.checkpoints import ensure_checkpoints
from bench.benchlib.machine import Log, QuietWait, bench_env, machine_info
from bench.benchlib.process import python_env
from bench.benchlib.results import ResultWriter, result_path
from bench.benchlib.server import Server

log = Log("run_durability_bench")
quiet = QuietWait()
MIB = 1 << 20


# --- the disk --------------------------------------------------------------------------------

def dd(args):
    """Seconds and bytes of one dd run (its own report on stderr)."""
    out = subprocess.run(["dd", *args], capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"dd {' '.join(args)}: {out.stderr.strip()}")
    m = re.search(r"(\d+) bytes .* copied, ([\d.e-]+) s", out.stderr)
    return float(m.group(2)), int(m.group(1))


def drop_cache(path):
    """Evicts a file's pages from the page cache (written data must be on disk: fsync'd)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def disk_points(directory, mib, runs):
    path = os.path.join(directory, "dd-test.bin")
    lines = []
    for label, size in (("large", mib), ("state", 24)):
        best = {}
        for _ in range(runs):
            for name, args in (
                    ("write_fsync", [f"of={path}", "conv=fsync"]),
                    ("write_direct", [f"of={path}", "oflag=direct", "conv=fsync"]),
                    ("read_direct", ["of=/dev/null", "iflag=direct"])):
                if name == "read_direct":
                    drop_cache(path)
                    args = [f"if={path}", *args]
                else:
                    args = ["if=/dev/zero", *args]
                try:
                    seconds, n = dd([*args, "bs=1M", f"count={size}"])
                except RuntimeError as e:  # e.g. O_DIRECT refused by the file system
                    log(str(e))
                    continue
                best[name] = max(best.get(name, 0.0), n / seconds / 1e6)
        os.unlink(path)
        lines.append({"impl": "disk", "figure": "disk_bandwidth", "size_mib": size,
                      "label": label, "directory": directory, "runs": runs,
                      **{f"{k}_mb_s": round(v, 1) for k, v in best.items()}})
        log(f"disk {label} ({size} MiB): " + ", ".join(f"{k} {v:.0f} MB/s"
                                                     for k, v in best.items()))
    return lines


# --- the server -------------------------------------------------------------------------------

def histogram(metrics, name, **labels):
    """(sum, count) of a Prometheus histogram in Server.metrics()'s flat form."""
    def pick(suffix):
        total = 0.0
        for key, value in metrics.items():
            if not key.startswith(name + suffix):
                continue
            if all(f'{k}="{v}"' in key for k, v in labels.items()):
                total += value
        return total
    return pick("_sum"), pick("_count")


def delta(after, before, name, **labels):
    s1, c1 = histogram(after, name, **labels)
    s0, c0 = histogram(before, name, **labels)
    return s1 - s0, c1 - c0


def client_for(server, timeout=600):
    from mnemo_client import MnemoClient
    return MnemoClient(server.target, timeout=timeout)


def doc_ids(n, vocab):
    return [(7 * i + 3) % (vocab - 10) + 5 for i in range(n)]


def fill(client, session_id, n_tokens, vocab):
    client.ingest(session_id, [doc_ids(n_tokens, vocab)])


def snapshot_points(args, build, model_dir, env, name, store_dir):
    """Snapshot writes (SYNC commits) and Export, then restores after a restart."""
    shutil.rmtree(store_dir, ignore_errors=True)
    server = Server(build, model_dir, env, ["--session-store", store_dir])
    lines = []
    try:
        with client_for(server) as c:
            model = c.model()
            state = model.state_bytes_per_session
            vocab = model.vocab_size
            tokens = model.memory_tokens + 1
            ids = []
            for i in range(max(args.restores, 1)):
                s = c.create_session(durability="sync")
                fill(c, s.id, tokens, vocab)
                ids.append(s.id)
            plain = c.create_session(durability="none")
            fill(c, plain.id, tokens, vocab)
            quiet(30)
            # The same commits on a NONE session, interleaved: the difference of the medians is
            # the snapshot's whole cost (serialising the state, checksums, the store's write).
            before = server.metrics()
            sync_s, none_s = [], []
            for i in range(args.snapshots):
                for sid, times in ((ids[0], sync_s), (plain.id, none_s)):
                    t = time.perf_counter()
                    c.score(sid, ids=[5 + i % 7], commit=True)
                    times.append(time.perf_counter() - t)
            after = server.metrics()
            wall, none_wall = (statistics.median(sync_s) * args.snapshots,
                               statistics.median(none_s) * args.snapshots)
            seconds, count = delta(after, before, "mnemo_session_snapshot_seconds", op="write")
            nbytes, _ = delta(after, before, "mnemo_session_snapshot_bytes", op="write")
            export_s, export_bytes = [], 0
            for _ in range(args.snapshots):
                t = time.perf_counter()
                export_bytes = len(c.export_session(ids[0]))
                export_s.append(time.perf_counter() - t)
        lines.append({
            "impl": "mnemo-server", "figure": "snapshot_write", "model": name,
            "state_bytes": state, "snapshot_bytes": int(nbytes / max(count, 1)),
            "writes": int(count), "write_s_mean": seconds / max(count, 1),
            "write_mb_s": nbytes / seconds / 1e6 if seconds else None,
            "sync_commit_ms_median": wall / args.snapshots * 1e3,
            "none_commit_ms_median": none_wall / args.snapshots * 1e3,
            "snapshot_e2e_ms": (wall - none_wall) / args.snapshots * 1e3,
            "snapshot_e2e_mb_s": (nbytes / max(count, 1)) / ((wall - none_wall) / args.snapshots)
            / 1e6 if wall > none_wall else None,
            "export_mb_s_median": export_bytes / statistics.median(export_s) / 1e6,
            "export_ms_median": statistics.median(export_s) * 1e3})
    finally:
        server.stop()

    # Restores: a new process on the store, the files out of the page cache.
    server = Server(build, model_dir, env, ["--session-store", store_dir])
    try:
        for base, _, files in os.walk(os.path.join(store_dir, "sessions")):
            for f in files:
                drop_cache(os.path.join(base, f))
        quiet(30)
        before = server.metrics()
        first_request = []
        with client_for(server) as c:
            for sid in ids:
                t = time.perf_counter()
                c.score(sid, ids=[5])
                first_request.append(time.perf_counter() - t)
            resident = []
            for sid in ids:
                t = time.perf_counter()
                c.score(sid, ids=[5])
                resident.append(time.perf_counter() - t)
        after = server.metrics()
        seconds, count = delta(after, before, "mnemo_session_snapshot_seconds", op="read")
        nbytes, _ = delta(after, before, "mnemo_session_snapshot_bytes", op="read")
        lines.append({
            "impl": "mnemo-server", "figure": "snapshot_restore", "model": name,
            "state_bytes": state, "restores": int(count), "read_s_mean": seconds / max(count, 1),
            "read_mb_s": nbytes / seconds / 1e6 if seconds else None,
            "first_score_ms_median": statistics.median(first_request) * 1e3,
            "resident_score_ms_median": statistics.median(resident) * 1e3})
    finally:
        server.stop()
    shutil.rmtree(store_dir, ignore_errors=True)
    return lines


def ttft_points(args, build, model_dir, env, name, store_dir):
    """Time to first token by tier: one state's room on the device and in host memory."""
    shutil.rmtree(store_dir, ignore_errors=True)
    probe = Server(build, model_dir, env)
    with client_for(probe) as c:
        model = c.model()
    probe.stop()
    state = model.state_bytes_per_session
    server = Server(build, model_dir, env, [
        "--session-store", store_dir, "--device-state-budget", str(state),
        "--host-state-budget", str(state)])
    out = {}
    try:
        with client_for(server) as c:
            ids = []
            for _ in range(3):
                s = c.create_session()
                fill(c, s.id, model.memory_tokens + 1, model.vocab_size)
                ids.append(s.id)

            def ttft(sid):
                t = time.perf_counter()
                stream = c.generate(sid, None, max_tokens=1, temperature=0, ignore_eos=True,
                                    commit="scratch")
                for event in stream:
                    if event.HasField("delta"):
                        first = time.perf_counter() - t
                return first

            schedules = {"resident": [ids[2]], "promoted": [ids[0], ids[1]],
                         "store": [ids[0], ids[1], ids[2]]}
            for source, rotation in schedules.items():
                for sid in rotation * 2:  # settle the tiers into the rotation
                    ttft(sid)
                quiet(20)
                before = server.metrics()
                times = [ttft(rotation[i % len(rotation)]) for i in range(args.ttft_requests)]
                after = server.metrics()
                counted = {src: delta(after, before, "mnemo_time_to_first_token_seconds",
                                      state_source=src)[1]
                           for src in ("resident", "promoted", "store")}
                out[source] = {
                    "impl": "mnemo-server", "figure": "ttft_by_tier", "model": name,
                    "state_source": source, "state_bytes": state, "requests": len(times),
                    "ttft_ms_p50": statistics.median(times) * 1e3,
                    "ttft_ms_p95": sorted(times)[int(0.95 * (len(times) - 1))] * 1e3,
                    "server_counted": counted}
                log(f"{name} ttft {source}: p50 {out[source]['ttft_ms_p50']:.2f} ms "
                    f"(server counted {counted})")
    finally:
        server.stop()
    shutil.rmtree(store_dir, ignore_errors=True)
    return list(out.values())


def sync_overhead_points(args, build, model_dir, env, name, store_dir):
    """Small requests with commit on a SYNC session and a NONE session, interleaved."""
    shutil.rmtree(store_dir, ignore_errors=True)
    server = Server(build, model_dir, env, ["--session-store", store_dir])
    lines = []
    try:
        with client_for(server) as c:
            model = c.model()
            sessions = {}
            for durability in ("none", "sync"):
                s = c.create_session(durability=durability)
                fill(c, s.id, model.memory_tokens + 1, model.vocab_size)
                sessions[durability] = s.id
            requests = {
                "generate": lambda sid: c.generate_result(sid, None, max_tokens=4, temperature=0,
                                                          ignore_eos=True, commit="keep_all"),
                "score_commit": lambda sid: c.score(sid, ids=doc_ids(8, model.vocab_size),
                                                    commit=True),
            }
            quiet(30)
            for kind, request in requests.items():
                times = {"none": [], "sync": []}
                for i in range(args.latency_requests):
                    for durability in ("none", "sync") if i % 2 else ("sync", "none"):
                        t = time.perf_counter()
                        request(sessions[durability])
                        times[durability].append(time.perf_counter() - t)
                line = {"impl": "mnemo-server", "figure": "sync_overhead", "model": name,
                        "request": kind, "requests": args.latency_requests,
                        "state_bytes": model.state_bytes_per_session}
                for durability, ts in times.items():
                    ts = sorted(ts)
                    line[f"{durability}_ms_p50"] = statistics.median(ts) * 1e3
                    line[f"{durability}_ms_p95"] = ts[int(0.95 * (len(ts) - 1))] * 1e3
                line["overhead_ms_p50"] = line["sync_ms_p50"] - line["none_ms_p50"]
                line["overhead_ms_p95"] = line["sync_ms_p95"] - line["none_ms_p95"]
                lines.append(line)
                log(f"{name} {kind}: none p50 {line['none_ms_p50']:.2f} ms, sync p50 "
                    f"{line['sync_ms_p50']:.2f} ms (p95 {line['none_ms_p95']:.2f} / "
                    f"{line['sync_ms_p95']:.2f})")
    finally:
        server.stop()
    shutil.rmtree(store_dir, ignore_errors=True)
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.path.join(ROOT, "build", "release"))
    ap.add_argument("--store-dir", default=os.path.join(ROOT, "build", "durability-bench"),
                    help="where the store (and the dd test file) go: the disk measured")
    ap.add_argument("--models", default="bench,teacher")
    ap.add_argument("--disk-mib", type=int, default=512)
    ap.add_argument("--disk-runs", type=int, default=3)
    ap.add_argument("--snapshots", type=int, default=10)
    ap.add_argument("--restores", type=int, default=5)
    ap.add_argument("--ttft-requests", type=int, default=30)
    ap.add_argument("--latency-requests", type=int, default=100)
    ap.add_argument("--quick", action="store_true",
                    help="small counts (a smoke run): 64 MiB dd, 3 of everything")
    ap.add_argument("--openblas-coretype", default="")
    ap.add_argument("--out-dir", default=os.path.join(ROOT, "bench", "results"))
    args = ap.parse_args(argv)
    if args.quick:
        args.disk_mib, args.disk_runs, args.snapshots, args.restores = 64, 1, 3, 2
        args.ttft_requests, args.latency_requests = 6, 10
    env = python_env(bench_env(args.openblas_coretype), args.build)
    os.environ["PYTHONPATH"] = env["PYTHONPATH"]
    sys.path[:0] = [p for p in env["PYTHONPATH"].split(os.pathsep) if p not in sys.path]
    if not os.access(os.path.join(args.build, "mnemo-server"), os.X_OK):
        raise SystemExit(f"mnemo-server is missing in {args.build}: cmake --build --preset release")
    os.makedirs(args.store_dir, exist_ok=True)
    path = result_path("durability", args.out_dir)

    with ResultWriter(path) as out:
        out.record(machine_info(env, store_dir=args.store_dir,
                                store_fs=subprocess.run(["df", "-T", args.store_dir],
                                                        capture_output=True, text=True)
                                .stdout.splitlines()[-1]))
        disk = out.extend(disk_points(args.store_dir, args.disk_mib, args.disk_runs))
        models = {}
        if "bench" in args.models:
            _, ckpts = ensure_checkpoints(os.path.join(ROOT, "build", "bench-models"),
                                          sys.executable, log)
            models["bench"] = ckpts[512]
        if "teacher" in args.models:
            models["teacher"] = os.path.join(ROOT, "models", "teacher")
        store = os.path.join(args.store_dir, "store")
        for name, model_dir in models.items():
            log(f"model {name}: {model_dir}")
            out.extend(snapshot_points(args, args.build, model_dir, env, name, store))
            out.extend(ttft_points(args, args.build, model_dir, env, name, store))
            if name == "teacher":
                out.extend(sync_overhead_points(args, args.build, model_dir, env, name, store))
        large = [d for d in disk if d["label"] == "large"][0]
        derived = []
        for line in list(out.lines):
            if line.get("figure") == "snapshot_write" and line.get("write_mb_s"):
                derived.append({"impl": "derived", "figure": "snapshot_vs_disk",
                                "model": line["model"],
                                "write_fraction": line["write_mb_s"] / large["write_fsync_mb_s"],
                                "target": 0.5})
                if line.get("snapshot_e2e_mb_s"):
                    derived.append({
                        "impl": "derived", "figure": "snapshot_e2e_vs_disk",
                        "model": line["model"],
                        "write_fraction": line["snapshot_e2e_mb_s"] / large["write_fsync_mb_s"],
                        "target": 0.5})
            if line.get("figure") == "snapshot_restore" and line.get("read_mb_s") and \
                    large.get("read_direct_mb_s"):
                derived.append({"impl": "derived", "figure": "restore_vs_disk",
                                "model": line["model"],
                                "read_fraction": line["read_mb_s"] / large["read_direct_mb_s"],
                                "target": 0.5})
        out.extend(derived)

    print(f"results: {path}")
    print(f"\ndisk ({args.store_dir}): " + "; ".join(
        f"{d['size_mib']} MiB: write+fsync {d.get('write_fsync_mb_s')} MB/s, direct write "
        f"{d.get('write_direct_mb_s')} MB/s, direct read {d.get('read_direct_mb_s')} MB/s"
        for d in disk))
    for line in out.lines:
        fig = line.get("figure")
        if fig == "snapshot_write":
            e2e = line.get("snapshot_e2e_mb_s") or 0
            print(f"{line['model']}: snapshot {line['snapshot_bytes'] / MIB:.2f} MiB, store write "
                  f"{line['write_mb_s']:.0f} MB/s ({line['write_s_mean'] * 1e3:.1f} ms), SYNC "
                  f"commit {line['sync_commit_ms_median']:.1f} ms vs NONE "
                  f"{line['none_commit_ms_median']:.1f} ms: whole snapshot {e2e:.0f} MB/s "
                  f"({line['snapshot_e2e_ms']:.1f} ms), Export "
                  f"{line['export_mb_s_median']:.0f} MB/s")
        elif fig == "snapshot_restore":
            print(f"{line['model']}: restore {line['read_mb_s']:.0f} MB/s "
                  f"({line['read_s_mean'] * 1e3:.1f} ms), first request "
                  f"{line['first_score_ms_median']:.1f} ms vs resident "
                  f"{line['resident_score_ms_median']:.1f} ms")
        elif fig in ("snapshot_vs_disk", "snapshot_e2e_vs_disk", "restore_vs_disk"):
            frac = line.get("write_fraction", line.get("read_fraction"))
            print(f"{line['model']}: {fig} {frac:.2f} (target ≥ {line['target']})")
        elif fig == "ttft_by_tier":
            print(f"{line['model']}: ttft {line['state_source']:>8}: p50 "
                  f"{line['ttft_ms_p50']:.2f} ms, p95 {line['ttft_ms_p95']:.2f} ms")
        elif fig == "sync_overhead":
            print(f"{line['model']}: {line['request']:>12}: NONE p50/p95 "
                  f"{line['none_ms_p50']:.2f}/{line['none_ms_p95']:.2f} ms, SYNC "
                  f"{line['sync_ms_p50']:.2f}/{line['sync_ms_p95']:.2f} ms")


if __name__ == "__main__":
    main()
