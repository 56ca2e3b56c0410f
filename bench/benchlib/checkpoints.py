"""The CPU benchmark model (run_cpu_bench, run_server_bench): a seeded random-init Hugging Face
TransfoXLLMHeadModel, the mnemo checkpoint converted from it, and one more mnemo checkpoint per
memory length sharing its weights file; cached under build/bench-models/."""

import json
import os
import shutil
import subprocess

import mnemo_checkpoint
from bench.benchlib import ROOT
from bench.benchlib.process import python_env

MODEL = {
    "n_layer": 12, "d_model": 512, "d_embed": 512, "n_head": 8, "d_head": 64,
    "d_inner": 2048, "vocab_size": 32000, "mem_len": 512, "clamp_len": 1000,
    "same_length": True, "cutoffs": [], "div_val": 1,
    "tie_word_embeddings": True,
}
SEED = 0
PREFILL_MEM = 512
DECODE_MEMS = (512, 1600)


def ensure_checkpoints(models_dir, python, log=print):
    """(hf_dir, {mem_len: mnemo checkpoint dir}) of the benchmark model, made when missing."""
    tag = (f"txl-l{MODEL['n_layer']}-d{MODEL['d_model']}-h{MODEL['n_head']}"
           f"x{MODEL['d_head']}-f{MODEL['d_inner']}-v{MODEL['vocab_size']}"
           f"-seed{SEED}")
    base = os.path.join(models_dir, tag)
    hf_dir = os.path.join(base, "hf")
    ckpt = {m: os.path.join(base, f"mnemo-mem{m}") for m in DECODE_MEMS}
    stamp = os.path.join(base, "fields.json")
    want = json.dumps({"model": MODEL, "seed": SEED}, sort_keys=True)
    if os.path.isfile(stamp) and open(stamp).read() == want and all(
            os.path.isfile(os.path.join(d, mnemo_checkpoint.WEIGHTS_FILE))
            for d in ckpt.values()):
        return hf_dir, ckpt
    log(f"creating checkpoints in {base}")
    shutil.rmtree(base, ignore_errors=True)
    os.makedirs(base)
    first = ckpt[PREFILL_MEM]
    subprocess.run([python, os.path.join(ROOT, "tools", "convert_hf_transfo_xl.py"),
                    "--random-init", json.dumps(MODEL), "--seed", str(SEED),
                    "--save-hf", hf_dir, first], check=True, cwd=ROOT, env=python_env())
    for mem, d in ckpt.items():
        if d != first:
            cfg = dict(mnemo_checkpoint.read_config(first), mem_len=mem)
            mnemo_checkpoint.derive_checkpoint(first, d, cfg)
    with open(stamp, "w") as f:
        f.write(want)
    return hf_dir, ckpt
