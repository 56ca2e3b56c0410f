#!/usr/bin/env python3
"""Speculative decoding through mnemo-server, against the same server decoding plainly.

The shipped teacher (models/teacher, whose draft.json names the student) is served twice, one
server after the other on an otherwise idle machine: once from a directory holding the same files
without draft.json (plain decoding), once with `--speculative on`. Each run opens a session,
ingests a prompt of --prompt-tokens real test-book token ids, and generates --generate tokens
greedily; the client times the Generate stream. Both servers must return the same token ids for
every prompt (the run fails otherwise). The speculative server's Final.usage gives the draft's
proposed and accepted tokens.

Output: JSON lines (a run_info line, one per server, then a summary with the speedup) on stdout
and in --out-dir (server_speculative-<UTC time>-<commit>.jsonl).

The client runs in this process: the build's generated stubs must be importable (the venv's
mnemo.pth lists build/release/python; for another build, PYTHONPATH=<build>/python).

  .venv/bin/python -m bench.runners.run_server_speculative_bench --ids-file IDS
      [--build build/release] [--model models/teacher] [--prompts 5] [--prompt-tokens 128]
      [--generate 128]
"""

import argparse
import os
import statistics
import tempfile
import time

from bench.benchlib import ROOT
from bench.benchlib.machine import machine_info
from bench.benchlib.results import ResultWriter, result_path
from bench.benchlib.server import Server
from mnemo_checkpoint import read_json


def run(server, args, prompts):
    from mnemo_client import MnemoClient
    out = {"rates": [], "ids": [], "proposed": 0, "accepted": 0}
    with MnemoClient(server.target, timeout=600) as client:
        client.generate_result(prompt=prompts[0][:16], max_tokens=8, temperature=0,
                               ignore_eos=True)  # warm-up
        for prompt in prompts:
            session = client.create_session().id
            client.ingest(session, [prompt])
            start = time.perf_counter()
            result = client.generate_result(session, max_tokens=args.generate, temperature=0,
                                            ignore_eos=True)
            elapsed = time.perf_counter() - start
            client.delete_session(session)
            assert len(result.ids) == args.generate, len(result.ids)
            out["rates"].append(args.generate / elapsed)
            out["ids"].append(list(result.ids))
            out["proposed"] += result.final.usage.draft_tokens_proposed
            out["accepted"] += result.final.usage.draft_tokens_accepted
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ids-file", required=True, help="whitespace-separated token ids")
    p.add_argument("--build", default=os.path.join(ROOT, "build", "release"))
    p.add_argument("--model", default=os.path.join(ROOT, "models", "teacher"))
    p.add_argument("--prompts", type=int, default=5)
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--generate", type=int, default=128)
    p.add_argument("--out-dir", default=None, help="result directory (default bench/results)")
    args = p.parse_args()
    try:
        import mnemo_client  # noqa: F401
        from mnemo.v1 import mnemo_pb2  # noqa: F401
    except ImportError as e:
        raise SystemExit(f"{e}: put {os.path.join(args.build, 'python')} and clients/python on "
                         "PYTHONPATH (python/README.md)")
    with open(args.ids_file) as f:
        ids = [int(t) for t in f.read().split()]
    stride = max(len(ids) // args.prompts, args.prompt_tokens)
    prompts = [ids[i * stride:i * stride + args.prompt_tokens] for i in range(args.prompts)]
    if not os.path.exists(os.path.join(args.model, "draft.json")):
        raise SystemExit(f"{args.model} has no draft.json")
    env = dict(os.environ)
    results = {}
    with tempfile.TemporaryDirectory() as plain_dir:
        for name in os.listdir(args.model):
            if name != "draft.json":
                os.symlink(os.path.realpath(os.path.join(args.model, name)),
                           os.path.join(plain_dir, name))
        for mode, model_dir, extra in (("plain", plain_dir, ()),
                                       ("speculative", args.model, ("--speculative", "on"))):
            server = Server(args.build, model_dir, env, extra)
            try:
                results[mode] = run(server, args, prompts)
            finally:
                server.stop()
    if results["plain"]["ids"] != results["speculative"]["ids"]:
        raise SystemExit("the speculative server's greedy tokens differ from the plain server's")
    draft = read_json(os.path.join(args.model, "draft.json"))
    out = ResultWriter(result_path("server_speculative", args.out_dir), echo=True)
    out.record(machine_info(env))
    for mode, r in results.items():
        out.record({"impl": "mnemo-server", "figure": "server_speculative", "mode": mode,
                    "model": os.path.relpath(args.model, ROOT), "draft": draft,
                    "prompts": args.prompts, "prompt_tokens": args.prompt_tokens,
                    "generated_tokens": args.generate,
                    "tokens_per_s": {"min": min(r["rates"]),
                                     "median": statistics.median(r["rates"]),
                                     "max": max(r["rates"])},
                    "draft_proposed": r["proposed"], "draft_accepted": r["accepted"]})
    spec = results["speculative"]
    out.record({
        "figure": "server_speculative_summary", "greedy_identical": True,
        "acceptance": spec["accepted"] / spec["proposed"] if spec["proposed"] else None,
        "speedup": statistics.median(spec["rates"]) / statistics.median(results["plain"]["rates"]),
    })
    out.close()


if __name__ == "__main__":
    main()
