#!/usr/bin/env python3
"""Benchmark of the shipped default models: decode and prefill against the
PyTorch reference and the memory-bandwidth roofline, plus speculative decoding.

The shipped checkpoints (models/teacher, models/student and their pruned
variants) are what users run, so this measures them as they are, with real
token ids, in one run on one machine:

  1. physical_limits at the start and at the end (the best pass counts):
     STREAM-like "read" bandwidth with one thread and with every thread over
     an array larger than the cache, and over a small working set
     (--ws-mib, about one decode step's bytes: the cache-resident rate these
     small models can actually stream at).
  2. every model directory of --models (teacher first): mnemo_bench
     --figure decode and --figure prefill --segment 64; for pruned models
     (the engine found sparse forms) also --sparse-weights off, to show what
     the sparse forms buy. Median tokens/s; decode's bytes_per_token gives
     the roofline tokens/s = read bandwidth / bytes_per_token and the
     fraction reached. bytes_per_token counts compressive layers too
     (compressed rows' K/V, their distance rows, the compressor); with
     sparse forms in use, the bytes of those forms replace the dense
     matrices'.
  3. the PyTorch peer on the same checkpoint (bench/peers/peer_reference_decode.py:
     TransfoXLReference of mnemo_reference, float32 weights, XL and
     compressive memory carried through its own forward, primed with real
     ids; torch threads probed): decode (T = 1, argmax) and prefill
     (segments of 64, last position's logits), on mnemo_bench's schedule.
     Reported as mnemo / peer.
  4. speculative decoding of the teacher with its draft (draft.json, or
     --draft) and with student-movement-90 when present, for every K of
     --draft-tokens: mnemo_bench --figure speculative with prompts of 128
     real tokens from --ids-file and 128 generated tokens. The greedy output
     must be the teacher's own (greedy_identical); the run fails loudly
     otherwise.
  5. every timed figure waits (bounded) for idle CPUs and is re-run once if
     other processes took over 10% of the machine meanwhile (run_cpu_bench's
     logic, reused); the load is recorded with each line.

Output: JSON lines (a run_info header, one line per figure, one derived line
per model, a summary) in bench/results/default_models-<UTC time>-<commit>.jsonl,
progress on stderr and a Markdown summary on stdout.

    .venv/bin/python -m bench.runners.run_default_models_bench --models models \\
        --ids-file IDS [--build-dir build/release] [--out FILE] [--runs 5] \\
        [--draft-tokens 1,2,3,4] [--quick]
"""

import argparse
import os
import statistics
import sys
import time

import numpy as np

from bench.benchlib import ROOT
from bench.benchlib.machine import Log, QuietWait, bench_env, machine_info
from bench.benchlib.process import python_env, require_built, run_clean
from bench.benchlib.results import ResultWriter, result_path
from mnemo_checkpoint import read_json, safetensors_header

PREFILL_SEGMENT = 64
PROMPT_TOKENS = 128
GENERATED_TOKENS = 128
EXTRA_DRAFT = "student-movement-90"

# The matrices the engine may run from sparse forms (TransfoXlModel::
# WeightMatrices; the names tools/prune_checkpoint.py prunes). A tied output
# layer is the embedding, never pruned.
SPARSE_CANDIDATES = ("attn.qkv.weight", "attn.o.weight", "ff.fc1.weight",
                     "ff.fc2.weight", "lm_head.weight", "emb_proj.weight")
SPARSE_MAX_BYTE_FRACTION = 0.8  # engine/tensor/sparse_weight.h


log = Log("run_default_models_bench")


def read_ids(path):
    with open(path) as f:
        return [int(t) for t in f.read().split()]


# --------------------------------------------------------------------------
# Models


def model_order(name):
    """teacher, student, then teacher variants, student variants, others."""
    if name == "teacher":
        return (0, name)
    if name == "student":
        return (1, name)
    if name.startswith("teacher-"):
        return (2, name)
    if name.startswith("student-"):
        return (3, name)
    return (4, name)


def find_models(models_dir):
    names = [n for n in os.listdir(models_dir)
             if os.path.isfile(os.path.join(models_dir, n, "config.json"))
             and os.path.isfile(os.path.join(models_dir, n,
                                             "model.safetensors"))]
    return sorted(names, key=model_order)


def planned_sparse_matrices(model_dir):
    """The weight matrices the engine's loader turns into sparse forms
    (PlanSparseWeight: CSR at ~6 bytes per nonzero + 8 per row, or 2:4 at
    2.25 bytes per element, kept when at most 0.8 of the float32 bytes).
    Returns (count, their float32 bytes); the engine's own sparse_bytes then
    gives the bytes a decode step reads from them."""
    path = os.path.join(model_dir, "model.safetensors")
    header, base = safetensors_header(path)
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    views = {"F32": ("<u4", 0x7FFFFFFF), "BF16": ("<u2", 0x7FFF),
             "F16": ("<u2", 0x7FFF)}
    count, dense_bytes = 0, 0
    for name, meta in header.items():
        if (name == "__metadata__" or len(meta["shape"]) != 2
                or not name.endswith(SPARSE_CANDIDATES)
                or meta["dtype"] not in views):
            continue
        rows, cols = meta["shape"]
        begin, end = meta["data_offsets"]
        view, magnitude = views[meta["dtype"]]
        values = raw[base + begin:base + end].view(view).reshape(rows, cols)
        nonzero = (values & magnitude) != 0  # -0.0 counts as zero
        nnz = int(nonzero.sum())
        f32_bytes = 4 * rows * cols
        best = 6.0 * nnz + 8.0 * rows
        if cols % 4 == 0 and nonzero.reshape(rows, cols // 4, 4).sum(-1).max(
                initial=0) <= 2:
            best = min(best, 2.25 * rows * cols)
        if best <= SPARSE_MAX_BYTE_FRACTION * f32_bytes:
            count += 1
            dense_bytes += f32_bytes
    return count, dense_bytes


# --------------------------------------------------------------------------
# Running


def tag(lines, **fields):
    for line in lines:
        line.update(fields)
        line["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    return lines


# --------------------------------------------------------------------------
# Limits


def bandwidths(machine_lines):
    """Best read GB/s per (array, threads) over both physical_limits passes."""
    best = {}
    for l in machine_lines:
        if l.get("figure") == "bandwidth" and l.get("kernel") == "read":
            key = (l["array"], l["threads"])
            best[key] = max(best.get(key, 0.0), l["best_gbps"])
    threads = sorted({t for _, t in best})
    out = {"array_mib": {}}
    for l in machine_lines:
        if l.get("figure") == "bandwidth" and l.get("kernel") == "read":
            out["array_mib"][l["array"]] = l["array_mib"]
    for array in ("large", "working_set"):
        one = best.get((array, 1))
        allt = best.get((array, threads[-1])) if threads else None
        out[array] = {"one_thread_gbps": one, "all_threads_gbps": allt,
                      "all_threads": threads[-1] if threads else None,
                      "best_gbps": max(filter(None, (one, allt)),
                                       default=None)}
    return out


def median(summary_or_none):
    return None if summary_or_none is None else summary_or_none["median"]


def ratio(a, b):
    return a / b if a is not None and b else None


# --------------------------------------------------------------------------
# Markdown


def fmt(v, spec=".0f"):
    return "–" if v is None else format(v, spec)


def markdown(info, limits, rows, spec_rows, failures, dirty, out_path,
             total_s):
    out = []
    out.append("## mnemo default models benchmark")
    out.append("")
    out.append(f"{info['date']}, commit {info['commit'] or '?'}"
               f"{' (dirty)' if info['dirty'] else ''}, {info['cpu_model']} "
               f"× {info['cpus']}, OPENBLAS_CORETYPE="
               f"{info['OPENBLAS_CORETYPE']}, ids {info['ids_file']} "
               f"({info['ids']} ids){', quick' if info['quick'] else ''}")
    lg, ws = limits["large"], limits["working_set"]
    out.append("")
    out.append(f"Read bandwidth: {fmt(lg['one_thread_gbps'], '.1f')} GB/s "
               f"one thread, {fmt(lg['all_threads_gbps'], '.1f')} GB/s "
               f"{lg['all_threads']} threads ({limits['array_mib'].get('large')}"
               f" MiB array); working set "
               f"{limits['array_mib'].get('working_set')} MiB: "
               f"{fmt(ws['one_thread_gbps'], '.1f')} / "
               f"{fmt(ws['all_threads_gbps'], '.1f')} GB/s.")
    out.append("")
    out.append("| model | checkpoint MB | decode tok/s | decode, sparse off "
               "| prefill S=64 tok/s | prefill, sparse off | peer decode "
               "| mnemo ÷ peer | peer prefill | mnemo ÷ peer | MB read/token "
               "| roofline tok/s | fraction | fraction (working-set bw) |")
    out.append("|" + "---|" * 14)
    for r in rows:
        out.append(
            f"| {r['model']} | {r['checkpoint_bytes'] / 1e6:.2f} "
            f"| {fmt(r['decode_tokens_per_s'])} "
            f"| {fmt(r['decode_tokens_per_s_sparse_off'])} "
            f"| {fmt(r['prefill_tokens_per_s'])} "
            f"| {fmt(r['prefill_tokens_per_s_sparse_off'])} "
            f"| {fmt(r['peer_decode_tokens_per_s'])} "
            f"| {fmt(r['mnemo_over_peer_decode'], '.1f')} "
            f"| {fmt(r['peer_prefill_tokens_per_s'])} "
            f"| {fmt(r['mnemo_over_peer_prefill'], '.1f')} "
            f"| {fmt(r['bytes_per_token_read'] / 1e6, '.2f')} "
            f"| {fmt(r['roofline_tokens_per_s'])} "
            f"| {fmt(r['fraction_of_roofline'], '.2f')} "
            f"| {fmt(r['fraction_of_working_set_roofline'], '.3f')} |")
    out.append("")
    out.append("Medians. Decode: T = 1 on a full memory (primed with "
               "mem_len tokens plus compression_rate · cmem_len), argmax. "
               "Roofline = best large-array read bandwidth ÷ the bytes a step "
               "reads (mnemo_bench's bytes_per_token: float32 weights as the "
               "CPU backend computes, K/V memory and compressed memory, "
               "distance rows, the compressor once per compression_rate "
               "steps; with sparse forms in use, their bytes instead of the "
               "dense matrices'). Peer: tests/reference TransfoXLReference, "
               "float32, same schedule.")
    if spec_rows:
        out.append("")
        out.append("| draft | K | acceptance | tokens/pass | alone tok/s "
                   "| speculative tok/s | speedup | greedy identical |")
        out.append("|" + "---|" * 8)
        for s in spec_rows:
            out.append(
                f"| {s['draft_name']} | {s['draft_tokens']} "
                f"| {s['acceptance']:.3f} | {s['tokens_per_pass']:.2f} "
                f"| {s['alone_tokens_per_s']['median']:.0f} "
                f"| {s['speculative_tokens_per_s']['median']:.0f} "
                f"| {s['speedup']:.2f} "
                f"| {'yes' if s['greedy_identical'] else '**NO**'} |")
        out.append("")
        out.append(f"Teacher, prompts of {spec_rows[0]['prompt_tokens']} "
                   f"real tokens, {spec_rows[0]['tokens_per_run']} generated"
                   f", {spec_rows[0]['runs']} run(s); medians.")
    if dirty:
        out.append("")
        out.append("WARNING: other processes used >10% of the CPUs during: "
                   + "; ".join(f"{k} ({v:.0%})" for k, v in dirty.items()))
    for f in failures:
        out.append("")
        out.append(f"**FAILED: {f}**")
    out.append("")
    out.append(f"total {total_s:.0f} s; JSON lines: {out_path}")
    return "\n".join(out)


# --------------------------------------------------------------------------
# Main


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=os.path.join(ROOT, "models"),
                    help="directory of model directories")
    ap.add_argument("--ids-file", required=True,
                    help="whitespace-separated token ids (held-out text)")
    ap.add_argument("--build-dir", default=os.path.join(ROOT, "build",
                                                        "release"))
    ap.add_argument("--python", default=os.path.join(ROOT, ".venv", "bin",
                                                     "python"))
    ap.add_argument("--out", help="JSON lines file (default bench/results/"
                    "default_models-<UTC time>-<commit>.jsonl)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--draft-tokens", default="1,2,3,4",
                    help="speculative: K values (comma-separated)")
    ap.add_argument("--draft", help="the teacher's draft (default: its "
                    "draft.json)")
    ap.add_argument("--quick", action="store_true",
                    help="1 run, fewer steps, short physical_limits (tests)")
    ap.add_argument("--no-peer", action="store_true",
                    help="leave out the PyTorch reference")
    ap.add_argument("--peer-threads", default="1,2",
                    help="torch thread counts the peer probes")
    ap.add_argument("--ws-mib", type=int, default=8,
                    help="physical_limits working-set array (MiB): about "
                         "one decode step's bytes")
    ap.add_argument("--openblas-coretype",
                    help="OPENBLAS_CORETYPE for every subprocess ('auto': "
                         "unset it)")
    ap.add_argument("--retries", type=int, default=1)
    ap.add_argument("--quiet-wait", type=float, default=30.0)
    ap.add_argument("--quiet-budget", type=float, default=300.0)
    args = ap.parse_args(argv)

    t_start = time.time()
    quiet = QuietWait(args.quiet_budget)
    # A status query must never take the index lock of a working checkout.
    os.environ["GIT_OPTIONAL_LOCKS"] = "0"
    env = python_env(bench_env(args.openblas_coretype))
    python = args.python if os.path.exists(args.python) else sys.executable
    mnemo_bench, physical = require_built(
        args.build_dir, ("mnemo_bench", "physical_limits"))
    models_dir = os.path.abspath(args.models)
    names = find_models(models_dir)
    if not names:
        raise SystemExit(f"no model directories in {models_dir}")
    ids_file = os.path.abspath(args.ids_file)
    ids = read_ids(ids_file)
    configs = {n: read_json(os.path.join(models_dir, n, "config.json"))
               for n in names}
    for n, c in configs.items():
        if not ids or min(ids) < 0 or max(ids) >= c["vocab_size"]:
            raise SystemExit(f"{ids_file}: ids must lie in [0, "
                             f"{c['vocab_size']}) for {n}")
    draft_ks = [int(k) for k in args.draft_tokens.split(",") if k]

    runs = 1 if args.quick else args.runs
    warmup = 1 if args.quick else 2            # mnemo_bench --warmup
    decode_steps = 16 if args.quick else 64
    segments_per_run = 2 if args.quick else max(1, 1024 // PREFILL_SEGMENT)
    generated = 32 if args.quick else GENERATED_TOKENS
    if len(ids) < PROMPT_TOKENS * runs:
        raise SystemExit(f"{ids_file}: {len(ids)} ids; speculative prompts "
                         f"need {PROMPT_TOKENS * runs}")
    limits_cmd = [physical, "--ws-mib", str(args.ws_mib)] + (
        ["--quick", "--large-mib", "256"] if args.quick else [])

    out = ResultWriter(args.out or result_path("default_models"))
    out_path = out.path

    info = machine_info(env)
    info.update({"script": "run_default_models_bench", "models_dir":
                 models_dir, "models": names, "ids_file": ids_file,
                 "ids": len(ids), "quick": args.quick, "runs": runs,
                 "decode_steps": decode_steps, "prefill_segment":
                 PREFILL_SEGMENT, "segments_per_run": segments_per_run})
    teacher_draft_json = os.path.join(models_dir, "teacher", "draft.json")
    if os.path.isfile(teacher_draft_json):
        info["teacher_draft_json"] = read_json(teacher_draft_json)
    lines = out.lines
    record = out.extend

    record([info])

    def clean(cmd, timeout=300):
        return run_clean(cmd, env, timeout, quiet, args.quiet_wait, args.retries, log=log)

    log("physical limits (1/2)")
    machine = record(tag(clean(limits_cmd, 600), model=None))

    # mnemo and the peer, model by model.
    results = {}  # (model, impl, figure, sparse) -> line
    for name in names:
        d = os.path.join(models_dir, name)
        common = ["--runs", str(runs), "--warmup", str(warmup)]
        for fig in ("decode", "prefill"):
            extra = (["--decode-steps", str(decode_steps)] if fig == "decode"
                     else ["--segment", str(PREFILL_SEGMENT),
                           "--segments-per-run", str(segments_per_run)])
            cmd = [mnemo_bench, "--model", d, "--figure", fig] + common + extra
            log(f"{name}: mnemo {fig}")
            line = record(tag(clean(cmd), model=name, model_dir=d,
                              sparse_weights="on"))[0]
            results[(name, "mnemo", fig, "on")] = line
            if line.get("sparse_matrices", 0) > 0:
                log(f"{name}: mnemo {fig}, sparse weights off")
                off = record(tag(clean(cmd + ["--sparse-weights", "off"]),
                                 model=name, model_dir=d,
                                 sparse_weights="off"))[0]
                results[(name, "mnemo", fig, "off")] = off
        if args.no_peer:
            continue
        for fig in ("decode", "prefill"):
            cmd = [python, "-m", "bench.peers.peer_reference_decode",
                   "--ckpt-dir", d, "--ids-file", ids_file, "--figure", fig,
                   "--runs", str(runs), "--decode-steps", str(decode_steps),
                   "--warmup-steps", str(warmup * 8), "--segment",
                   str(PREFILL_SEGMENT), "--segments-per-run",
                   str(segments_per_run), "--warmup-segments", str(warmup),
                   "--threads", args.peer_threads]
            log(f"{name}: PyTorch reference {fig}")
            line = record(tag(clean(cmd, 900), model=name, model_dir=d))[0]
            results[(name, "pytorch_reference", fig, None)] = line

    # Speculative decoding of the teacher.
    spec_rows, failures = [], []
    teacher = os.path.join(models_dir, "teacher")
    drafts = []
    if args.draft:
        drafts.append((os.path.relpath(os.path.abspath(args.draft),
                                       models_dir), os.path.abspath(
                                           args.draft)))
    elif os.path.isfile(os.path.join(teacher, "draft.json")):
        spec = read_json(os.path.join(teacher, "draft.json"))
        path = os.path.normpath(os.path.join(teacher, spec["model"]))
        if os.path.isdir(path):
            drafts.append((os.path.relpath(path, models_dir)
                           + " (draft.json)", path))
        else:
            log(f"teacher/draft.json names {path}, which does not exist")
    extra_draft = os.path.join(models_dir, EXTRA_DRAFT)
    if os.path.isdir(extra_draft) and all(
            os.path.realpath(p) != os.path.realpath(extra_draft)
            for _, p in drafts):
        drafts.append((EXTRA_DRAFT, extra_draft))
    if not os.path.isdir(teacher):
        log("no teacher directory: speculative decoding skipped")
        drafts = []
    elif not drafts:
        log("the teacher has no draft (no draft.json, no --draft, no "
            f"{EXTRA_DRAFT}): speculative decoding skipped")
    for draft_name, draft_dir in drafts:
        for k in draft_ks:
            cmd = [mnemo_bench, "--model", teacher, "--figure", "speculative",
                   "--draft", draft_dir, "--ids-file", ids_file,
                   "--draft-tokens", str(k), "--segment", str(PROMPT_TOKENS),
                   "--decode-steps", str(generated), "--runs", str(runs)]
            if args.quick:
                cmd += ["--warmup", "0"]
            log(f"teacher speculative, draft {draft_name}, K = {k}")
            line = record(tag(run_clean(cmd, env, 600, quiet, args.quiet_wait,
                                        args.retries, keep_failed=True, log=log),
                              model="teacher", draft_name=draft_name))[0]
            spec_rows.append(line)
            if not line.get("greedy_identical") or line["exit_code"] != 0:
                failures.append(
                    f"speculative decoding with draft {draft_name}, K = {k}:"
                    " the output is not the teacher's own greedy output "
                    f"(greedy_identical {line.get('greedy_identical')}, "
                    f"exit code {line['exit_code']})")
                log("ERROR: " + failures[-1])

    log("physical limits (2/2)")
    machine += record(tag(clean(limits_cmd, 600), model=None))
    limits = bandwidths(machine)
    bw = limits["large"]["best_gbps"]
    ws_bw = limits["working_set"]["best_gbps"]

    # Derived figures per model.
    rows = []
    for name in names:
        d = os.path.join(models_dir, name)
        dec = results[(name, "mnemo", "decode", "on")]
        pre = results[(name, "mnemo", "prefill", "on")]
        dec_off = results.get((name, "mnemo", "decode", "off"))
        pre_off = results.get((name, "mnemo", "prefill", "off"))
        peer_dec = results.get((name, "pytorch_reference", "decode", None))
        peer_pre = results.get((name, "pytorch_reference", "prefill", None))
        dense_bytes = dec["bytes_per_token"]  # compressed memory included
        read_bytes = dense_bytes
        sparse_note = None
        if dec.get("sparse_matrices", 0) > 0:
            count, f32_bytes = planned_sparse_matrices(d)
            if count == dec["sparse_matrices"]:
                read_bytes = dense_bytes - f32_bytes + dec["sparse_bytes"]
            else:
                sparse_note = (f"the engine planned {dec['sparse_matrices']} "
                               f"sparse matrices, this script {count}: "
                               "roofline counts dense bytes")
        dec_med = median(dec["tokens_per_s"])
        row = {
            "impl": "derived", "figure": "model", "model": name,
            "checkpoint_bytes": os.path.getsize(
                os.path.join(d, "model.safetensors")),
            "stored_dtype": configs[name].get("torch_dtype"),
            "n_layer": configs[name]["n_layer"],
            "d_model": configs[name]["d_model"],
            "decode_tokens_per_s": dec_med,
            "decode_tokens_per_s_sparse_off": median(
                dec_off and dec_off["tokens_per_s"]),
            "prefill_tokens_per_s": median(pre["tokens_per_s"]),
            "prefill_tokens_per_s_sparse_off": median(
                pre_off and pre_off["tokens_per_s"]),
            "sparse_matrices": dec.get("sparse_matrices", 0),
            "sparse_bytes": dec.get("sparse_bytes", 0),
            "peer_decode_tokens_per_s": median(
                peer_dec and peer_dec["tokens_per_s"]),
            "peer_prefill_tokens_per_s": median(
                peer_pre and peer_pre["tokens_per_s"]),
            "bytes_per_token": dense_bytes,
            "bytes_per_token_read": read_bytes,
            "bandwidth_gbps": bw, "working_set_bandwidth_gbps": ws_bw,
            "roofline_tokens_per_s": bw * 1e9 / read_bytes,
            "fraction_of_roofline": dec_med / (bw * 1e9 / read_bytes),
            "roofline_dense_tokens_per_s": bw * 1e9 / dense_bytes,
            "fraction_of_working_set_roofline": (
                dec_med / (ws_bw * 1e9 / read_bytes) if ws_bw else None),
        }
        if sparse_note:
            row["note"] = sparse_note
        if dec_off:
            row["fraction_of_roofline_sparse_off"] = (
                median(dec_off["tokens_per_s"]) / (bw * 1e9 / dense_bytes))
            row["sparse_speedup_decode"] = ratio(
                dec_med, median(dec_off["tokens_per_s"]))
        row["mnemo_over_peer_decode"] = ratio(
            dec_med, row["peer_decode_tokens_per_s"])
        row["mnemo_over_peer_prefill"] = ratio(
            row["prefill_tokens_per_s"], row["peer_prefill_tokens_per_s"])
        rows.append(record([row])[0])

    dirty = {}
    for l in lines:
        if l.get("foreign_cpu_frac", 0) > 0.10:
            what = ("physical_limits" if l["impl"] == "machine" else
                    f"{l.get('model')} {l['impl']} {l['figure']}"
                    + (f" sparse {l['sparse_weights']}"
                       if "sparse_weights" in l else "")
                    + (f" draft {l['draft_name']} K={l['draft_tokens']}"
                       if "draft_tokens" in l else ""))
            dirty[what] = max(dirty.get(what, 0), l["foreign_cpu_frac"])
    total_s = time.time() - t_start
    record([{
        "impl": "derived", "figure": "summary", "limits": limits,
        "models": [r["model"] for r in rows],
        "speculative": [
            {k: s.get(k) for k in (
                "draft_name", "draft_tokens", "acceptance",
                "tokens_per_pass", "speedup", "greedy_identical")}
            | {"alone_tokens_per_s": s["alone_tokens_per_s"]["median"],
               "speculative_tokens_per_s":
               s["speculative_tokens_per_s"]["median"]}
            for s in spec_rows],
        "median_speedup_by_draft": {
            n: statistics.median(s["speedup"] for s in spec_rows
                                 if s["draft_name"] == n)
            for n in {s["draft_name"] for s in spec_rows}},
        "contaminated": dirty, "failures": failures,
        "loadavg": os.getloadavg(), "total_wall_s": round(total_s, 1)}])
    out.close()

    print(markdown(info, limits, rows, spec_rows, failures, dirty, out_path,
                   total_s), flush=True)
    if failures:
        log(f"FAILED: {len(failures)} speculative figure(s) did not "
            "reproduce the teacher's greedy output")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
