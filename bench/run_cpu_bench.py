#!/usr/bin/env python3
"""mnemo CPU benchmark: mnemo vs Hugging Face TransfoXL vs the PyTorch reference.

One run on one machine, one checkpoint (random weights, f32):
  12 layers, d_model 512, 8 heads x 64, d_inner 2048, vocabulary 32000
  (clamp_len 1000, same_length true: Hugging Face's Transformer-XL defaults).

Steps (each measuring step is its own subprocess, so peak RSS is per figure):
  1. checkpoints (cached under build/bench-models/): a seeded random-init HF
     TransfoXLLMHeadModel saved with save_pretrained (tools/
     convert_hf_transfo_xl.py --random-init --save-hf), the mnemo checkpoint
     converted from it (mem_len 512), and a second mnemo checkpoint with
     mem_len 1600 and the same weights file (hard link).
  2. parity: log-probabilities of mnemo, HF and the reference on the same ids.
  3. physical_limits: memory bandwidth and OpenBLAS sgemm peak.
  4. figures, for mnemo (bench/mnemo_bench), HF and the reference
     (bench/peer_pytorch.py): prefill segment 128 and 512 on a full memory of
     512 (logits of the last position: LogitsMode::kLast); decode with memory
     512 and 1600. Extra, informational: prefill 512 with every position's
     logits (mnemo LogitsMode::kAll vs HF's LM head forward), the scoring
     use case. physical_limits runs again at the end; the best pass counts.
  5. ratios (mnemo / peer) and fractions of the physical limits; summary;
     every JSON line goes to bench/results/cpu-<date>.jsonl.

BLAS settings are identical for every subprocess: OPENBLAS_CORETYPE as
inherited (the project's machines set Haswell; when it is unset this script
sets Haswell unless --openblas-coretype auto), OPENBLAS_NUM_THREADS as
inherited or the number of CPUs, OMP_WAIT_POLICY=PASSIVE.

Physical limits (explicit definitions):
  decode  bytes read per token = every weight a decode step reads (per layer
          qkv, o, fc1 + bias, fc2 + bias, LayerNorms, r_w/r_r biases; the
          output layer [vocab, d_model] + bias; one embedding row; W_r is not
          read: the positional table is precomputed) + the session state read
          (K and V of M positions per layer) + the new K/V row written.
          limit tokens/s = best all-threads STREAM-like read bandwidth over a
          1 GiB array / those bytes. A second fraction also counts the rows of
          the precomputed positional table a step reads (min(M, clamp)+1 rows
          of H*d_h per layer).
  prefill FLOPs per token = GEMM FLOPs only (2*m*n*k): qkv, o, fc1, fc2
          projections; attention content (q+u).k, positional (q+v).R per
          distinct distance, and probs.V over the keys each query may see
          (causal, same_length, memory M = mem_len full); the output layer for
          the segment's last position only (LogitsMode::kLast), divided by S.
          LayerNorm, softmax, bias/ReLU and embedding are not counted.
          limit tokens/s = OpenBLAS sgemm peak (best 2048^3, any thread count)
          / FLOPs per token. A second fraction uses the best rate OpenBLAS
          reached on the prefill's own projection shapes ([S,512]x[512,1536]
          etc.).
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MODEL = {
    "n_layer": 12, "d_model": 512, "d_embed": 512, "n_head": 8, "d_head": 64,
    "d_inner": 2048, "vocab_size": 32000, "mem_len": 512, "clamp_len": 1000,
    "same_length": True, "cutoffs": [], "div_val": 1,
    "tie_word_embeddings": True,
}
SEED = 0
PREFILL_SEGMENTS = (128, 512)
PREFILL_MEM = 512
DECODE_MEMS = (512, 1600)

TARGETS = {"decode": {"vs_hf": 10.0, "fraction": 0.5},
           "prefill": {"vs_hf": 3.0, "fraction": 0.5}}


def log(msg):
    print(f"[run_cpu_bench] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# Environment and machine


def bench_env(args):
    env = dict(os.environ)
    if args.openblas_coretype == "auto":
        env.pop("OPENBLAS_CORETYPE", None)
    elif args.openblas_coretype:
        env["OPENBLAS_CORETYPE"] = args.openblas_coretype
    elif not env.get("OPENBLAS_CORETYPE"):
        env["OPENBLAS_CORETYPE"] = "Haswell"
    env.setdefault("OPENBLAS_NUM_THREADS", str(os.cpu_count() or 1))
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    env.pop("OMP_NUM_THREADS", None)  # the peer sets torch threads itself
    return env


def cpu_busy_fraction(seconds=1.0):
    """Fraction of all CPUs busy over `seconds` (from /proc/stat)."""
    def read():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        idle = v[3] + v[4]
        return sum(v), idle
    t0, i0 = read()
    time.sleep(seconds)
    t1, i1 = read()
    return 1.0 - (i1 - i0) / max(1, t1 - t0)


_QUIET_BUDGET = [120.0]  # seconds of waiting left for the whole run


def wait_quiet(max_wait):
    """Waits (up to max_wait s, and within the run's total waiting budget)
    until other processes leave the CPUs idle; returns the busy fraction."""
    t0 = time.time()
    deadline = t0 + min(max_wait, _QUIET_BUDGET[0])
    busy = cpu_busy_fraction(0.5)
    while busy > 0.10 and time.time() < deadline:
        time.sleep(2)
        busy = cpu_busy_fraction(0.5)
    _QUIET_BUDGET[0] = max(0.0, _QUIET_BUDGET[0] - (time.time() - t0))
    return busy


def machine_info(env):
    def sh(cmd):
        try:
            return subprocess.run(cmd, shell=True, capture_output=True,
                                  text=True, cwd=ROOT).stdout.strip()
        except OSError:
            return ""
    model_name = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model_name = line.split(":", 1)[1].strip()
                break
    flags = sh("grep -m1 '^flags' /proc/cpuinfo")
    return {
        "impl": "machine", "figure": "run_info",
        "date": sh("date -u +%Y-%m-%dT%H:%M:%SZ"),
        "commit": sh("git rev-parse --short HEAD"),
        "dirty": bool(sh("git status --porcelain --untracked-files=no")),
        "cpu_model": model_name, "cpus": os.cpu_count(),
        "avx512f": " avx512f" in flags, "amx_tile": " amx_tile" in flags,
        "l3": sh("lscpu | grep -i 'L3 cache' | sed 's/.*: *//'"),
        "mem_total": sh("grep MemTotal /proc/meminfo | sed 's/.*: *//'"),
        "kernel": platform.release(),
        "loadavg": os.getloadavg(),
        "OPENBLAS_CORETYPE": env.get("OPENBLAS_CORETYPE", "(unset: auto)"),
        "OPENBLAS_NUM_THREADS": env.get("OPENBLAS_NUM_THREADS"),
        "OMP_WAIT_POLICY": env.get("OMP_WAIT_POLICY"),
    }


# --------------------------------------------------------------------------
# Checkpoints


def ensure_checkpoints(models_dir, python):
    tag = (f"txl-l{MODEL['n_layer']}-d{MODEL['d_model']}-h{MODEL['n_head']}"
           f"x{MODEL['d_head']}-f{MODEL['d_inner']}-v{MODEL['vocab_size']}"
           f"-seed{SEED}")
    base = os.path.join(models_dir, tag)
    hf_dir = os.path.join(base, "hf")
    ckpt = {m: os.path.join(base, f"mnemo-mem{m}") for m in DECODE_MEMS}
    stamp = os.path.join(base, "fields.json")
    want = json.dumps({"model": MODEL, "seed": SEED}, sort_keys=True)
    if os.path.isfile(stamp) and open(stamp).read() == want and all(
            os.path.isfile(os.path.join(d, "model.safetensors"))
            for d in ckpt.values()):
        return hf_dir, ckpt
    log(f"creating checkpoints in {base}")
    shutil.rmtree(base, ignore_errors=True)
    os.makedirs(base)
    first = ckpt[PREFILL_MEM]
    subprocess.run([python, os.path.join(ROOT, "tools",
                                         "convert_hf_transfo_xl.py"),
                    "--random-init", json.dumps(MODEL), "--seed", str(SEED),
                    "--save-hf", hf_dir, first], check=True, cwd=ROOT)
    for mem, d in ckpt.items():
        if d == first:
            continue
        os.makedirs(d)
        with open(os.path.join(first, "config.json")) as f:
            cfg = json.load(f)
        cfg["mem_len"] = mem
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2)
            f.write("\n")
        src = os.path.join(first, "model.safetensors")
        dst = os.path.join(d, "model.safetensors")
        try:
            os.link(src, dst)
        except OSError:
            shutil.copyfile(src, dst)
    with open(stamp, "w") as f:
        f.write(want)
    return hf_dir, ckpt


# --------------------------------------------------------------------------
# Running


def require_built(build_dir, names):
    """The paths of the programs `names` in build_dir; exits naming the build
    command when one is missing."""
    paths = [os.path.join(build_dir, name) for name in names]
    for exe in paths:
        if not os.access(exe, os.X_OK):
            raise SystemExit(f"{exe} not built: cmake --build {build_dir} "
                             f"--target {' '.join(names)}")
    return paths


def cpu_jiffies():
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return sum(v) - idle, sum(v)


def run_json(cmd, env, timeout, keep_failed=False):
    """Runs cmd; returns its JSON stdout lines (stderr passes through).

    Each line gets wall_s and foreign_cpu_frac: the share of the machine's
    CPU time used by processes other than this measurement while it ran
    (other people's builds on a shared machine), a contamination flag.
    A non-zero exit ends the run, unless `keep_failed`: then the lines come
    back with their exit_code (a program that reports a failed check as a
    JSON line, e.g. mnemo_bench --figure speculative when greedy outputs
    differ), and only a failure without any line ends the run.
    """
    hz = os.sysconf("SC_CLK_TCK")
    ncpu = os.cpu_count() or 1
    r0 = os.times()
    b0, _ = cpu_jiffies()
    t0 = time.time()
    proc = subprocess.run(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                          text=True, timeout=timeout)
    wall = time.time() - t0
    b1, _ = cpu_jiffies()
    r1 = os.times()
    if proc.returncode != 0 and not keep_failed:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}")
    ours = ((r1.children_user - r0.children_user)
            + (r1.children_system - r0.children_system)
            + (r1.user - r0.user) + (r1.system - r0.system))
    foreign = max(0.0, (b1 - b0) / hz - ours) / (wall * ncpu)
    lines = [json.loads(l) for l in proc.stdout.splitlines()
             if l.startswith("{")]
    if keep_failed and not lines:
        raise SystemExit(f"no JSON line (exit code {proc.returncode}): "
                         f"{' '.join(cmd)}")
    for line in lines:
        line.setdefault("wall_s", round(wall, 2))
        line["foreign_cpu_frac"] = round(foreign, 3)
        if keep_failed:
            line["exit_code"] = proc.returncode
    return lines


def run_clean(cmd, env, timeout, quiet_wait, retries, keep_failed=False):
    """run_json after waiting for idle CPUs; re-runs (up to `retries` times)
    while other processes took over 10% of the CPUs, keeping the cleanest
    (a failed run, with `keep_failed`, is kept as it is)."""
    best = None
    for attempt in range(retries + 1):
        busy = wait_quiet(quiet_wait)
        lines = run_json(cmd, env, timeout, keep_failed)
        for line in lines:
            line["cpu_busy_before"] = round(busy, 3)
            line["attempt"] = attempt
        foreign = lines[0]["foreign_cpu_frac"] if lines else 0.0
        if best is None or foreign < best[0]:
            best = (foreign, lines)
        if foreign <= 0.10 or (lines and lines[0].get("exit_code", 0) != 0):
            break
        log(f"  {foreign:.0%} of the CPUs were busy with other processes; "
            + ("re-running" if attempt < retries else "keeping the cleanest"))
    return best[1]


def figure_key(line):
    return (line["figure"], line["segment"], line["mem"],
            line.get("logits", "last"))


# --------------------------------------------------------------------------
# Physical limits


def bytes_per_decode_token(cfg, mem):
    d, h, dh, f, v = (cfg["d_model"], cfg["n_head"], cfg["d_head"],
                      cfg["d_inner"], cfg["vocab_size"])
    hd = h * dh
    layer_weights = (3 * hd * d + d * hd + f * d + f + d * f + d
                     + 4 * d + 2 * hd)
    weights = cfg["n_layer"] * layer_weights + v * d + v + d
    state = cfg["n_layer"] * (2 * mem * hd + 2 * hd)
    clamp = cfg["clamp_len"] if cfg["clamp_len"] > 0 else mem
    pos_table = cfg["n_layer"] * (min(mem, clamp) + 1) * hd
    return {"weights": 4 * weights, "state": 4 * state,
            "pos_table": 4 * pos_table}


def first_visible_key(i, s, m, mem_len, same_length):
    if not same_length:
        return 0
    k = m + s
    shift = mem_len - m if k > mem_len else s
    return max(0, i - shift + 1)


def flops_per_prefill_token(cfg, s, m, logits="last"):
    d, h, dh, f, v = (cfg["d_model"], cfg["n_head"], cfg["d_head"],
                      cfg["d_inner"], cfg["vocab_size"])
    hd = h * dh
    proj = 2 * s * (d * 3 * hd + hd * d + 2 * d * f)
    clamp = cfg["clamp_len"] if cfg["clamp_len"] > 0 else 1 << 60
    attn = 0
    for i in range(s):
        first = first_visible_key(i, s, m, cfg["mem_len"], cfg["same_length"])
        keys = m + i - first + 1
        distances = min(keys, clamp + 1)
        attn += 4 * hd * keys + 2 * hd * distances
    head = 2 * d * v * (s if logits == "all" else 1)
    total = cfg["n_layer"] * (proj + attn) + head
    return {"total": total / s, "projections": cfg["n_layer"] * proj / s,
            "attention": cfg["n_layer"] * attn / s, "output_head": head / s}


def limits_from(machine_lines):
    read = [l for l in machine_lines if l["figure"] == "bandwidth"
            and l["kernel"] == "read" and l["array"] == "large"]
    bw = max(read, key=lambda l: l["best_gbps"])
    square = [l for l in machine_lines if l["figure"] == "sgemm"
              and l["shape"] == "square"]
    peak = max(square, key=lambda l: l["best_gflops"])
    shaped = {}
    for l in machine_lines:
        if l["figure"] == "sgemm" and l["shape"].startswith("prefill_"):
            key = (l["m"], l["shape"])
            shaped[key] = max(shaped.get(key, 0.0), l["best_gflops"])
    return {"bandwidth_gbps": bw["best_gbps"], "bandwidth_threads":
            bw["threads"], "sgemm_peak_gflops": peak["best_gflops"],
            "sgemm_peak_threads": peak["threads"], "sgemm_shaped": shaped}


def prefill_shaped_gflops(limits, s, cfg):
    """FLOP-weighted harmonic mean of the best OpenBLAS rates on this S's
    projection shapes: the rate the projections could run at."""
    d, hd, f = cfg["d_model"], cfg["n_head"] * cfg["d_head"], cfg["d_inner"]
    parts = {"prefill_qkv": d * 3 * hd, "prefill_fc1": d * f,
             "prefill_fc2": f * d}
    num = sum(parts.values())
    den = 0.0
    for shape, w in parts.items():
        rate = limits["sgemm_shaped"].get((s, shape))
        if not rate:
            return None
        den += w / rate
    return num / den


# --------------------------------------------------------------------------
# Main


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build-dir", default=os.path.join(ROOT, "build",
                                                        "release"))
    ap.add_argument("--models-dir", default=os.path.join(ROOT, "build",
                                                         "bench-models"))
    ap.add_argument("--python", default=os.path.join(ROOT, ".venv", "bin",
                                                     "python"))
    ap.add_argument("--out", help="JSON lines file (default "
                    "bench/results/cpu-<UTC date-time>.jsonl)")
    ap.add_argument("--openblas-coretype",
                    help="set OPENBLAS_CORETYPE for every subprocess "
                         "('auto': unset it)")
    ap.add_argument("--runs", type=int, default=7, help="mnemo runs")
    ap.add_argument("--peer-runs", type=int, default=3)
    ap.add_argument("--hf-decode-steps", type=int, default=8,
                    help="decode steps per peer run (x --peer-runs)")
    ap.add_argument("--skip-reference", action="store_true")
    ap.add_argument("--breakdown", action="store_true",
                    help="also time mnemo's Forward kernel by kernel "
                         "(mnemo_bench --figure breakdown)")
    ap.add_argument("--no-all-logits", action="store_true",
                    help="skip the extra all-logits prefill figure")
    ap.add_argument("--retries", type=int, default=1,
                    help="re-runs of a figure during which other processes "
                         "used over 10%% of the CPUs")
    ap.add_argument("--quiet-wait", type=float, default=30.0,
                    help="max seconds to wait for idle CPUs before each "
                         "measurement")
    ap.add_argument("--quiet-budget", type=float, default=120.0,
                    help="max seconds of such waiting in the whole run")
    args = ap.parse_args(argv)

    t_start = time.time()
    _QUIET_BUDGET[0] = args.quiet_budget
    env = bench_env(args)
    python = args.python if os.path.exists(args.python) else sys.executable
    mnemo_bench, physical = require_built(args.build_dir,
                                          ("mnemo_bench", "physical_limits"))
    hf_dir, ckpt = ensure_checkpoints(args.models_dir, python)
    out_path = args.out or os.path.join(
        ROOT, "bench", "results",
        "cpu-" + datetime.datetime.utcnow().strftime("%Y%m%d-%H%M%S")
        + ".jsonl")
    os.makedirs(os.path.dirname(out_path), exist_ok=True)

    lines = [machine_info(env)]
    print(json.dumps(lines[0]), flush=True)

    def emit(new):
        for line in new:
            print(json.dumps(line), flush=True)
            lines.append(line)
        return new

    # Parity: same weights in all three.
    ids_file = os.path.join(args.models_dir, "parity-ids.txt")
    logits_file = os.path.join(args.models_dir, "parity-mnemo-logits.f32")
    with open(ids_file, "w") as f:
        f.write(" ".join(str((i * 7919 + 13) % MODEL["vocab_size"])
                         for i in range(24)) + "\n")
    subprocess.run([mnemo_bench, "--model", ckpt[PREFILL_MEM], "--figure",
                    "logits", "--ids-file", ids_file, "--output",
                    logits_file], env=env, cwd=ROOT, check=True)
    parity = emit(run_json([python, "bench/peer_pytorch.py", "--check-parity",
                   "--hf-dir", hf_dir, "--ckpt-dir", ckpt[PREFILL_MEM],
                   "--ids-file", ids_file, "--mnemo-logits", logits_file],
                  env, 300))

    log("physical limits (1/2)")
    machine = emit(run_clean([physical], env, 300, args.quiet_wait,
                             args.retries))

    figures = [("prefill", s, PREFILL_MEM, "last")
               for s in PREFILL_SEGMENTS] + [
        ("decode", 1, m, "last") for m in DECODE_MEMS]
    # Extra (not a target figure): prefill with every position's logits, the
    # scoring use case (mnemo LogitsMode::kAll vs HF's LM head forward).
    extra = [] if args.no_all_logits else [("prefill", 512, PREFILL_MEM,
                                            "all")]
    results = {}
    for fig, seg, mem, logits in figures + extra:
        log(f"mnemo {fig} segment {seg} mem {mem} logits {logits}")
        cmd = [mnemo_bench, "--model", ckpt[mem], "--figure", fig,
               "--runs", str(args.runs)]
        if fig == "prefill":
            cmd += ["--segment", str(seg), "--logits", logits]
        else:
            cmd += ["--decode-steps", "64"]
        for line in emit(run_clean(cmd, env, 300, args.quiet_wait,
                                   args.retries)):
            results[("mnemo",) + figure_key(line)] = line

    peers = ["hf_transfo_xl"] + ([] if args.skip_reference
                                 else ["pytorch_reference"])
    for impl in peers:
        for fig, seg, mem, logits in figures + (
                extra if impl == "hf_transfo_xl" else []):
            log(f"{impl} {fig} segment {seg} mem {mem} logits {logits}")
            cmd = [python, "bench/peer_pytorch.py", "--impl", impl,
                   "--figure", fig, "--hf-dir", hf_dir, "--ckpt-dir",
                   ckpt[mem], "--mem", str(mem), "--runs",
                   str(args.peer_runs), "--decode-steps",
                   str(args.hf_decode_steps)]
            if fig == "prefill":
                cmd += ["--segment", str(seg), "--logits", logits]
            if impl == "pytorch_reference" and fig == "prefill" and seg >= 512:
                # The oracle materialises [T, K, H, d_h] distance embeddings:
                # ~15 s and ~2.7 GB per 512-token segment. Keep it short.
                cmd[cmd.index("--runs") + 1] = "2"
                cmd += ["--threads", "2", "--warmup", "0"]
            # Re-run only the cheap peer figures when contaminated.
            cheap = not (impl == "pytorch_reference" and fig == "prefill")
            for line in emit(run_clean(cmd, env, 600, args.quiet_wait,
                                       args.retries if cheap else 0)):
                results[(impl,) + figure_key(line)] = line

    if args.breakdown:
        # Diagnostic: time per kernel inside mnemo's Forward (not a figure).
        for seg, mem in ((1, 512), (1, 1600), (128, 512), (512, 512)):
            log(f"mnemo breakdown segment {seg} mem {mem}")
            emit(run_clean([mnemo_bench, "--model", ckpt[mem], "--figure",
                            "breakdown", "--segment", str(seg)], env, 300,
                           args.quiet_wait, args.retries))

    # Limits again at the end: a limit is a best case, so the best of the two
    # passes is used (a pass slowed by other load would flatter mnemo).
    log("physical limits (2/2)")
    machine += emit(run_clean([physical], env, 300, args.quiet_wait,
                              args.retries))

    # Derived figures.
    limits = limits_from(machine)
    cfg = dict(MODEL)
    summary_rows = []
    for fig, seg, mem, logits in figures + extra:
        key = (fig, seg, mem, logits)
        m = results[("mnemo",) + key]
        med = m["tokens_per_s"]["median"]
        c = dict(cfg, mem_len=mem)
        derived = {"impl": "derived", "figure": fig, "segment": seg,
                   "mem": mem, "logits": logits,
                   "mnemo_tokens_per_s": m["tokens_per_s"]}
        for impl in peers:
            if (impl,) + key not in results:
                continue
            p = results[(impl,) + key]["tokens_per_s"]
            derived[f"mnemo_over_{impl}"] = {
                "median": med / p["median"],
                "min": m["tokens_per_s"]["min"] / p["max"],
                "max": m["tokens_per_s"]["max"] / p["min"]}
        if fig == "decode":
            b = bytes_per_decode_token(c, mem)
            per_token = b["weights"] + b["state"]
            limit = limits["bandwidth_gbps"] * 1e9 / per_token
            limit_pos = (limits["bandwidth_gbps"] * 1e9
                         / (per_token + b["pos_table"]))
            derived.update({
                "bytes_per_token": b, "bandwidth_gbps":
                limits["bandwidth_gbps"], "limit_tokens_per_s": limit,
                "fraction_of_limit": med / limit,
                "fraction_of_limit_incl_pos_table": med / limit_pos,
                "effective_gbps": med * per_token / 1e9})
        else:
            fl = flops_per_prefill_token(c, seg, mem, logits)
            limit = limits["sgemm_peak_gflops"] * 1e9 / fl["total"]
            shaped = prefill_shaped_gflops(limits, seg, c)
            derived.update({
                "flops_per_token": fl,
                "sgemm_peak_gflops": limits["sgemm_peak_gflops"],
                "limit_tokens_per_s": limit,
                "fraction_of_limit": med / limit,
                "effective_gflops": med * fl["total"] / 1e9})
            if shaped:
                derived["sgemm_prefill_shapes_gflops"] = shaped
                derived["fraction_of_prefill_shapes_rate"] = (
                    med * fl["total"] / 1e9 / shaped)
        t = TARGETS[fig]
        derived["targets"] = None if logits != "last" else {
            "vs_hf": t["vs_hf"], "fraction": t["fraction"],
            "vs_hf_met": derived["mnemo_over_hf_transfo_xl"]["median"]
            >= t["vs_hf"],
            "fraction_met": derived["fraction_of_limit"] >= t["fraction"]}
        emit([derived])
        summary_rows.append(derived)

    done = {"impl": "machine", "figure": "run_end",
            "loadavg": os.getloadavg(),
            "total_wall_s": round(time.time() - t_start, 1)}
    emit([done])
    with open(out_path, "w") as f:
        for line in lines:
            f.write(json.dumps(line) + "\n")

    # Human summary.
    info = lines[0]
    out = sys.stderr
    print("\n== mnemo CPU benchmark ==", file=out)
    print(f"{info['date']}  commit {info['commit']}"
          f"{' (dirty)' if info['dirty'] else ''}  {info['cpu_model']} x"
          f"{info['cpus']}  OPENBLAS_CORETYPE={info['OPENBLAS_CORETYPE']}  "
          f"OPENBLAS_NUM_THREADS={info['OPENBLAS_NUM_THREADS']}", file=out)
    print(f"limits: read bandwidth {limits['bandwidth_gbps']:.1f} GB/s "
          f"({limits['bandwidth_threads']} threads), sgemm peak "
          f"{limits['sgemm_peak_gflops']:.0f} GFLOP/s "
          f"({limits['sgemm_peak_threads']} threads)", file=out)
    hdr = (f"{'figure':<33}{'mnemo tok/s (min/med/max)':<30}"
           f"{'HF med':>9}{'ref med':>9}{'x HF':>7}{'x ref':>8}"
           f"{'limit':>9}{'frac':>7}  targets")
    print(hdr, file=out)
    for d in summary_rows:
        fig, seg, mem, logits = (d["figure"], d["segment"], d["mem"],
                                 d["logits"])
        name = (f"prefill S={seg} M={mem}" if fig == "prefill"
                else f"decode M={mem}")
        if logits == "all":
            name += " all-logits"
        mt = d["mnemo_tokens_per_s"]
        hf = results[("hf_transfo_xl", fig, seg, mem, logits)][
            "tokens_per_s"]
        ref = results.get(("pytorch_reference", fig, seg, mem, logits))
        ref_med = ref["tokens_per_s"]["median"] if ref else float("nan")
        x_ref = d.get("mnemo_over_pytorch_reference", {}).get(
            "median", float("nan"))
        t = d["targets"]
        verdict = "(informational)" if t is None else (
            f"x{t['vs_hf']:g} HF {'met' if t['vs_hf_met'] else 'NOT met'}"
            f", {t['fraction']:.0%} limit "
            f"{'met' if t['fraction_met'] else 'NOT met'}")
        print(f"{name:<33}"
              f"{mt['min']:>8.1f}/{mt['median']:>8.1f}/{mt['max']:>8.1f}    "
              f"{hf['median']:>9.1f}{ref_med:>9.1f}"
              f"{d['mnemo_over_hf_transfo_xl']['median']:>7.2f}"
              f"{x_ref:>8.1f}{d['limit_tokens_per_s']:>9.0f}"
              f"{d['fraction_of_limit']:>7.2f}  {verdict}", file=out)
    for impl in ["mnemo"] + peers:
        rss = [results[(impl,) + k]["peak_rss_mib"] for k in figures]
        print(f"peak RSS {impl:<18}: " + ", ".join(
            f"{r:.0f}" for r in rss) + " MiB (figures in the order above)",
            file=out)
    print("parity (max |log-prob| difference, same ids): " + ", ".join(
        f"{k} {v:.1e}" for k, v in parity[0]["max_abs_logprob_diff"].items())
        + ("" if parity[0]["ok"] else "  <-- NOT THE SAME MODEL"), file=out)
    dirty = {}
    for l in lines:
        if l.get("foreign_cpu_frac", 0) > 0.10:
            name = ("physical_limits" if l["impl"] == "machine" else
                    f"{l['impl']} {l['figure']} S={l.get('segment')} "
                    f"M={l.get('mem')} {l.get('logits', '')}".strip())
            dirty[name] = max(dirty.get(name, 0), l["foreign_cpu_frac"])
    if dirty:
        print("WARNING: other processes used >10% of the CPUs during: "
              + "; ".join(f"{k} ({v:.0%})" for k, v in dirty.items()),
              file=out)
    print(f"total {done['total_wall_s']} s; wrote {out_path}", file=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
