"""The default models' quality table: bits on the held-out test books, speed and sizes.

One row per evaluated checkpoint, all scored by the engine itself (``mnemo score --json``) on
the test split of ``export_kjv.py`` (``DATA_DIR/test.txt``), so the numbers are the ones a user
of the shipped checkpoints gets, not the trainers' own evaluations:

* the teacher and the student (``--memory-models``) under evaluation memories, written as
  derived checkpoints in a temporary directory: "memory off" (``mem_len`` 0, the compressive
  layers made plain XL layers and the compressor tensors dropped, since the loader rejects
  tensors the config does not use), "XL only" (every ``--memory-lengths`` value and the trained
  ``mem_len``, compressive layers made plain) and "XL + compressive" (the same lengths, the
  compressive layers as trained; lengths below a layer's compression rate are skipped). The row
  at the trained configuration is the shipped directory itself, marked ``shipped``;
* every other checkpoint directory as shipped (the pruned, fine-tuned variants);
* with ``--magnitude-baseline``, one-shot magnitude pruning of the teacher
  (``tools/prune_checkpoint.py`` at 50/80/90% and 2:4, no fine-tune), the baseline the
  fine-tuned pruning has to beat.

Per row: bits per token and per byte, scored tokens, checkpoint bytes, the fraction of zeros in
the pruned matrices (``prune_checkpoint.PRUNED_SUFFIXES``), the parameter count, the session
state bytes (``mnemo_bench``'s ``state_bytes``; a one-step decode run for the memory variants,
whose state depends on the memory lengths) and, for rows at a shipped configuration only,
decode and prefill tokens/s (``mnemo_bench`` medians over ``--runs``). The memory variants get
no timings: they answer "what does memory buy", the shipped rows "what does a user run".

Writes ``--out`` (JSON: metadata and rows) and a Markdown table (``--markdown`` and stdout) for
the README. Usage::

    .venv/bin/python tools/train/quality_table.py --models models --data /tmp/kjv \\
        --out quality.json --markdown quality.md --magnitude-baseline
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

import torch

import mnemo_checkpoint
from tools import prune_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CHECKPOINT_FILES = ("config.json", "model.safetensors", "tokenizer.model")
# Fields a compressive layer entry adds to a plain dense one (docs/checkpoint-format.md).
COMPRESSIVE_FIELDS = ("memory", "compression", "compression_rate", "cmem_len",
                      "compression_kernel")
COMPRESSOR_TENSOR = ".attn.compress."
# One-shot magnitude baselines: (directory suffix, description, prune_checkpoint arguments).
BASELINES = (("50", "one-shot magnitude 50%", 0.5, False),
             ("80", "one-shot magnitude 80%", 0.8, False),
             ("90", "one-shot magnitude 90%", 0.9, False),
             ("2of4", "one-shot magnitude 2:4", None, True))
QUICK_LINES = 20

GROUP_MEMORY = "memory"
GROUP_SHIPPED = "shipped"
GROUP_BASELINE = "one-shot baseline"


class QualityTableError(Exception):
    """A problem the user must fix (bad directories, a failing engine run)."""


def log(msg: str) -> None:
    print(f"[quality_table] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------


read_config = mnemo_checkpoint.read_config


def discover_models(models_dir: str) -> List[str]:
    """Names of the checkpoint directories: teacher, student, then the rest sorted."""
    if not os.path.isdir(models_dir):
        raise QualityTableError(f"models directory {models_dir!r} does not exist")
    names = sorted(n for n in os.listdir(models_dir)
                   if os.path.isfile(os.path.join(models_dir, n, "config.json")))
    if not names:
        raise QualityTableError(f"no checkpoint directory (with a config.json) in {models_dir!r}")
    for name in names:
        for f in CHECKPOINT_FILES:
            if not os.path.isfile(os.path.join(models_dir, name, f)):
                raise QualityTableError(f"checkpoint {os.path.join(models_dir, name)!r} lacks {f}")
    first = [n for n in ("teacher", "student") if n in names]
    return first + [n for n in names if n not in first]


def compressive_layers(cfg: dict) -> List[dict]:
    return [e for e in cfg.get("layers") or [] if e.get("memory") == "compressive"]


def memory_of(cfg: dict) -> dict:
    """mem_len, cmem_len (the largest of the compressive layers', 0 if none) and the largest
    compression rate (0 if none)."""
    comp = compressive_layers(cfg)
    return {"mem_len": cfg["mem_len"],
            "cmem_len": max((e["cmem_len"] for e in comp), default=0),
            "compression_rate": max((e["compression_rate"] for e in comp), default=0)}


def derive_checkpoint(src: str, dst: str, mem_len: int, keep_compressive: bool) -> None:
    """A copy of checkpoint ``src`` with another ``mem_len``; without ``keep_compressive`` its
    compressive layers become plain XL layers and the compressor tensors are dropped. Layers of
    other kinds are left as they are. Weights are linked when no tensor changes."""
    cfg = read_config(src)
    cfg["mem_len"] = mem_len
    drop = False
    if not keep_compressive and cfg.get("layers"):
        layers = []
        for entry in cfg["layers"]:
            if entry.get("memory") == "compressive":
                entry = {k: v for k, v in entry.items() if k not in COMPRESSIVE_FIELDS}
                drop = True
            layers.append(entry)
        cfg["layers"] = layers
    os.makedirs(dst)
    if not drop:
        mnemo_checkpoint.derive_checkpoint(src, dst, cfg, symbolic=True,
                                           files=(mnemo_checkpoint.TOKENIZER_FILE,
                                                  mnemo_checkpoint.WEIGHTS_FILE))
        return
    mnemo_checkpoint.derive_checkpoint(src, dst, cfg, symbolic=True,
                                       files=(mnemo_checkpoint.TOKENIZER_FILE,))
    tensors, metadata = mnemo_checkpoint.load_tensors_with_metadata(
        src, keep=lambda name: COMPRESSOR_TENSOR not in name)
    mnemo_checkpoint.save_tensors(dst, tensors, metadata=metadata)


_WEIGHT_STATS: Dict[str, dict] = {}


def weight_stats(directory: str) -> dict:
    """Parameter count, and zeros / entries of the matrices pruning tools prune."""
    path = os.path.realpath(os.path.join(directory, "model.safetensors"))
    if path not in _WEIGHT_STATS:
        params = pruned = zeros = 0
        for name, t in mnemo_checkpoint.load_tensors(directory).items():
            params += t.numel()
            if t.dim() == 2 and name.endswith(prune_checkpoint.PRUNED_SUFFIXES):
                pruned += t.numel()
                zeros += int((t == 0).sum())
        _WEIGHT_STATS[path] = {"parameters": params, "pruned_entries": pruned,
                               "zero_fraction": zeros / pruned if pruned else None,
                               "checkpoint_bytes": os.path.getsize(path)}
    return dict(_WEIGHT_STATS[path])


def describe_shipped(directory: str) -> str:
    """What a shipped directory is, from its training.json when it says."""
    try:
        with open(os.path.join(directory, "training.json")) as f:
            rec = json.load(f)
    except (OSError, ValueError):
        return "as shipped"
    if "method" in rec and "target" in rec:
        target = rec["target"]
        target = target if isinstance(target, str) else f"{100 * target:g}%"
        return f"{rec['method']} pruning {target}, fine-tuned"
    if "teacher" in rec:
        return "distilled"
    return "as shipped"


# --------------------------------------------------------------------------
# Engine runs
# --------------------------------------------------------------------------


def run_tool(cmd: List[str], what: str) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as e:
        raise QualityTableError(f"{what}: cannot run {cmd[0]!r}: {e}") from e
    if proc.returncode != 0:
        stderr = proc.stderr.strip()[-4000:] or "(no stderr)"
        raise QualityTableError(f"{what} failed (exit {proc.returncode}):\n  "
                                f"{' '.join(cmd)}\n{stderr}")
    return proc.stdout


def last_json(stdout: str, cmd: List[str]) -> dict:
    lines = stdout.strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, ValueError) as e:
        raise QualityTableError(f"no JSON line at the end of the output of "
                                f"{' '.join(cmd)}") from e


def score(mnemo: str, model_dir: str, text: str, segment_len: int) -> dict:
    cmd = [mnemo, "score", "--model", model_dir, "--text-file", text,
           "--segment-len", str(segment_len), "--json"]
    summary = last_json(run_tool(cmd, "mnemo score"), cmd).get("summary")
    if not isinstance(summary, dict):
        raise QualityTableError(f"no summary line from {' '.join(cmd)}")
    return summary


def bench(mnemo_bench: str, model_dir: str, figure: str, extra: List[str]) -> dict:
    cmd = [mnemo_bench, "--model", model_dir, "--figure", figure, *extra]
    return last_json(run_tool(cmd, f"mnemo_bench --figure {figure}"), cmd)


# --------------------------------------------------------------------------
# Rows
# --------------------------------------------------------------------------


def memory_variants(name: str, src: str, lengths: List[int], work: str) -> List[dict]:
    """The evaluation memories of one model: variant, mem_len, cmem_len, whether it is the
    shipped configuration, and its directory (derived checkpoints are written to ``work``)."""
    cfg = read_config(src)
    trained = memory_of(cfg)
    has_comp = bool(compressive_layers(cfg))
    out = []
    if 0 in lengths:
        out.append({"variant": "memory off", "mem_len": 0, "keep_compressive": False})
    xl_lengths = sorted({m for m in lengths if m > 0} | ({trained["mem_len"]} - {0}))
    for m in xl_lengths:
        out.append({"variant": "XL only", "mem_len": m, "keep_compressive": False})
    if has_comp:
        for m in xl_lengths:
            if m >= trained["compression_rate"]:
                out.append({"variant": "XL + compressive", "mem_len": m,
                            "keep_compressive": True})
    for v in out:
        # The shipped configuration is the shipped directory itself, not a rewritten copy.
        v["shipped"] = v["mem_len"] == trained["mem_len"] and v["keep_compressive"] == has_comp
        if v["shipped"]:
            v["dir"] = src
        else:
            tag = f"{name}--{v['variant'].replace(' ', '').replace('+', '-')}-mem{v['mem_len']}"
            v["dir"] = os.path.join(work, tag)
            derive_checkpoint(src, v["dir"], v["mem_len"], v["keep_compressive"])
        v["cmem_len"] = trained["cmem_len"] if v["keep_compressive"] else 0
    return out


def evaluate_row(row: dict, args, text: str) -> dict:
    t0 = time.time()
    summary = score(args.mnemo, row["dir"], text, args.segment_len)
    row.update(bits_per_token=summary["bits_per_token"], bits_per_byte=summary["bits_per_byte"],
               total_bits=summary["total_bits"], tokens=summary["tokens"],
               scored_tokens=summary["scored_tokens"], bytes=summary["bytes"])
    row.update(weight_stats(row["dir"]))
    bench_args = ["--warmup", "0", "--decode-steps", "8", "--segments-per-run", "2"] \
        if args.quick else []
    if row["timed"]:
        dec = bench(args.bench, row["dir"], "decode", ["--runs", str(args.runs), *bench_args])
        pre = bench(args.bench, row["dir"], "prefill",
                    ["--segment", str(args.segment_len), "--runs", str(args.runs), *bench_args])
        row.update(decode_tokens_per_s=dec["tokens_per_s"]["median"],
                   prefill_tokens_per_s=pre["tokens_per_s"]["median"],
                   state_bytes=dec["state_bytes"], sparse_matrices=dec.get("sparse_matrices"))
    else:
        # State bytes only: one untimed decode step (its cost is priming mem_len tokens).
        dec = bench(args.bench, row["dir"], "decode",
                    ["--runs", "1", "--warmup", "0", "--decode-steps", "1"])
        row.update(decode_tokens_per_s=None, prefill_tokens_per_s=None,
                   state_bytes=dec["state_bytes"], sparse_matrices=dec.get("sparse_matrices"))
    row["seconds"] = round(time.time() - t0, 2)
    if not all(math.isfinite(row[k]) and row[k] > 0 for k in ("bits_per_token", "bits_per_byte")):
        raise QualityTableError(f"{row['model']} ({row['variant']}): bad bits {summary}")
    log(f"{row['model']:<24} {row['variant']:<32} mem {row['mem_len']:>5} cmem "
        f"{row['cmem_len']:>4}: {row['bits_per_token']:.4f} bits/token "
        f"{row['bits_per_byte']:.4f} bits/byte ({row['seconds']:.1f}s)")
    return row


def plan_rows(args, names: List[str], work: str) -> List[dict]:
    rows = []
    for name in names:
        src = os.path.join(args.models, name)
        if name in args.memory_models:
            for v in memory_variants(name, src, args.memory_lengths, work):
                rows.append({"group": GROUP_MEMORY, "model": name, "variant": v["variant"],
                             "shipped": v["shipped"], "derived": not v["shipped"],
                             "timed": v["shipped"], "dir": v["dir"],
                             "mem_len": v["mem_len"], "cmem_len": v["cmem_len"]})
        else:
            mem = memory_of(read_config(src))
            rows.append({"group": GROUP_SHIPPED, "model": name, "variant": describe_shipped(src),
                         "shipped": True, "derived": False, "timed": True, "dir": src,
                         "mem_len": mem["mem_len"], "cmem_len": mem["cmem_len"]})
    if args.magnitude_baseline:
        if "teacher" not in names:
            raise QualityTableError(f"--magnitude-baseline needs a 'teacher' directory in "
                                    f"{args.models!r}")
        src = os.path.join(args.models, "teacher")
        mem = memory_of(read_config(src))
        for suffix, description, sparsity, two_four in BASELINES:
            dst = os.path.join(work, f"teacher-oneshot-magnitude-{suffix}")
            report = prune_checkpoint.prune(src, dst, sparsity, two_four)
            if not report:
                raise QualityTableError("prune_checkpoint found no prunable matrix in the teacher")
            rows.append({"group": GROUP_BASELINE, "model": "teacher", "variant": description,
                         "shipped": False, "derived": True, "timed": True, "dir": dst,
                         "mem_len": mem["mem_len"], "cmem_len": mem["cmem_len"]})
    return rows


# --------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------


def machine() -> dict:
    name = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu_model": name, "cpus": os.cpu_count(), "loadavg": list(os.getloadavg())}


def git_commit() -> Optional[str]:
    try:
        proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True)
    except OSError:
        return None
    if proc.returncode != 0:
        return None
    return proc.stdout.strip() or None


def _num(value, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


MARKDOWN_COLUMNS = ("model", "variant", "mem", "cmem", "bits/token", "bits/byte", "tokens",
                    "decode tok/s", "prefill tok/s", "checkpoint MB", "state KiB", "zeros",
                    "params (M)")


def markdown_table(rows: List[dict], meta: dict) -> str:
    lines = ["| " + " | ".join(MARKDOWN_COLUMNS) + " |",
             "|" + "|".join(" --- " if i < 2 else " ---: " for i in range(len(MARKDOWN_COLUMNS)))
             + "|"]
    for r in rows:
        variant = r["variant"] + (" (shipped)" if r["group"] == GROUP_MEMORY and r["shipped"]
                                  else "")
        zeros = None if r["zero_fraction"] is None else 100 * r["zero_fraction"]
        cells = [f"`{r['model']}`", variant, str(r["mem_len"]), str(r["cmem_len"]),
                 _num(r["bits_per_token"], ".3f"), _num(r["bits_per_byte"], ".3f"),
                 str(r["scored_tokens"]), _num(r["decode_tokens_per_s"], ".0f"),
                 _num(r["prefill_tokens_per_s"], ".0f"), _num(r["checkpoint_bytes"] / 1e6, ".2f"),
                 _num(r["state_bytes"] / 1024, ".1f"),
                 "–" if zeros is None else f"{zeros:.1f}%",
                 _num(r["parameters"] / 1e6, ".3f")]
        lines.append("| " + " | ".join(cells) + " |")
    text = meta["text"]
    quick = f", quick: first {QUICK_LINES} lines" if meta["quick"] else ""
    runs = f"{meta['runs']} run" + ("s" if meta["runs"] > 1 else "")
    commit = f", commit {meta['commit'][:12]}" if meta["commit"] else ""
    note = (f"`mnemo score --segment-len {meta['segment_len']}` on `{text['name']}` "
            f"({text['scored_tokens']} scored tokens, {text['scored_bytes']} bytes{quick}); "
            f"tokens/s: `mnemo_bench` median of {runs} (decode with a full memory, prefill "
            f"segment {meta['segment_len']}), for shipped configurations and baselines only; "
            f"{meta['machine']['cpu_model']}, {meta['machine']['cpus']} cores; "
            f"{meta['date']}{commit}.")
    return "\n".join(lines) + "\n\n" + note + "\n"


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


def parse_lengths(value: str) -> List[int]:
    try:
        lengths = sorted({int(s) for s in value.split(",") if s.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {value!r}")
    if not lengths or lengths[0] < 0:
        raise argparse.ArgumentTypeError(f"memory lengths must be integers >= 0: {value!r}")
    return lengths


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", required=True, help="directory of checkpoint directories")
    ap.add_argument("--data", required=True, help="directory with test.txt (export_kjv.py)")
    ap.add_argument("--out", required=True, help="JSON file to write")
    ap.add_argument("--markdown", help="also write the Markdown table to this file")
    ap.add_argument("--mnemo", default=os.path.join(ROOT, "build", "release", "mnemo"))
    ap.add_argument("--bench", default=os.path.join(ROOT, "build", "release", "mnemo_bench"))
    ap.add_argument("--segment-len", type=int, default=64,
                    help="mnemo score's segment length and the prefill benchmark's segment")
    ap.add_argument("--runs", type=int, default=3, help="mnemo_bench timed runs (median)")
    ap.add_argument("--memory-lengths", type=parse_lengths, default=[0, 64, 256, 1024],
                    help="evaluation mem_len values of the memory variants (0: memory off); "
                         "the trained mem_len is always added")
    ap.add_argument("--memory-models", default="teacher,student",
                    help="comma-separated model directories that get the memory variants")
    ap.add_argument("--magnitude-baseline", action="store_true",
                    help="add one-shot magnitude pruning of the teacher (50/80/90%%, 2:4)")
    ap.add_argument("--quick", action="store_true",
                    help=f"first {QUICK_LINES} lines of test.txt, one short benchmark run")
    ap.add_argument("--keep-temp", action="store_true",
                    help="keep the derived checkpoints (their directory is printed)")
    args = ap.parse_args(argv)
    args.memory_models = {s.strip() for s in args.memory_models.split(",") if s.strip()}
    if args.quick:
        args.runs = 1
    if args.segment_len < 1 or args.runs < 1:
        ap.error("--segment-len and --runs must be at least 1")
    return args


def build_table(args) -> dict:
    for label, exe in (("--mnemo", args.mnemo), ("--bench", args.bench)):
        if not (os.path.isfile(exe) and os.access(exe, os.X_OK)):
            raise QualityTableError(f"{label} {exe!r} is not an executable file (build it: cmake "
                                    f"--build build/release --target mnemo mnemo_bench)")
    test_txt = os.path.join(args.data, "test.txt")
    if not os.path.isfile(test_txt):
        raise QualityTableError(f"{test_txt!r} does not exist (write it with "
                                f"tools/train/export_kjv.py {args.data})")
    names = discover_models(args.models)
    t_start = time.time()
    load = os.getloadavg()[0]
    if load > 0.5 * (os.cpu_count() or 1):
        # mnemo's thread pool uses every core: other processes make the tokens/s erratic.
        log(f"warning: load average {load:.1f} on {os.cpu_count()} CPUs; the timings will be "
            f"noisy (the bits are not affected)")
    work = tempfile.mkdtemp(prefix="quality_table-")
    try:
        text = test_txt
        if args.quick:
            text = os.path.join(work, "test-quick.txt")
            with open(test_txt, "rb") as src, open(text, "wb") as dst:
                dst.write(b"".join(src.readlines()[:QUICK_LINES]))
        text_bytes = os.path.getsize(text)
        rows = plan_rows(args, names, work)
        log(f"{len(rows)} rows over {len(names)} checkpoints on {text}")
        for row in rows:
            evaluate_row(row, args, text)
        for row in rows:
            # Derived checkpoints live in the temporary directory, which is removed.
            row["dir"] = None if row["derived"] else os.path.abspath(row["dir"])
    finally:
        if args.keep_temp:
            log(f"derived checkpoints kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    first = rows[0]
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
        "commit": git_commit(),
        "command": " ".join([sys.executable, *sys.argv]),
        "mnemo": os.path.abspath(args.mnemo),
        "mnemo_bench": os.path.abspath(args.bench),
        "models": os.path.abspath(args.models),
        "segment_len": args.segment_len,
        "runs": args.runs,
        "quick": args.quick,
        "memory_lengths": args.memory_lengths,
        "text": {"path": os.path.abspath(test_txt), "name": os.path.basename(test_txt),
                 "lines": QUICK_LINES if args.quick else None,
                 "file_bytes": text_bytes, "tokens": first["tokens"],
                 "scored_tokens": first["scored_tokens"], "scored_bytes": first["bytes"]},
        "wall_seconds": round(time.time() - t_start, 1),
    }
    return {"metadata": meta, "rows": rows}


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    try:
        table = build_table(args)
    except QualityTableError as e:
        print(f"quality_table: error: {e}", file=sys.stderr)
        return 1
    with open(args.out, "w") as f:
        json.dump(table, f, indent=2)
        f.write("\n")
    md = markdown_table(table["rows"], table["metadata"])
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(md)
    sys.stdout.write(md)
    log(f"wrote {args.out} ({len(table['rows'])} rows, {table['metadata']['wall_seconds']:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
