#!/usr/bin/env python3
"""Makes a small Transformer-XL checkpoint directory for smoke runs of the engine.

The tokenizer is a sentencepiece model trained with Debian's spm_train on the licence texts every
Debian system ships (/usr/share/common-licenses); the weights are seeded random numbers (numpy),
so the output text is not meaningful: the point is a complete, valid checkpoint (config.json,
model.safetensors, tokenizer.model) made without network access or PyTorch. Deterministic for a
given seed.

    make_tiny_model.py OUT_DIR [--seed N] [--vocab-size N]
"""

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

import mnemo_checkpoint

ARCH = {
    "architecture": "transfo_xl",
    "d_model": 128,
    "n_layer": 2,
    "n_head": 4,
    "d_head": 32,
    "d_inner": 512,
    "mem_len": 64,
    "clamp_len": 0,
    "same_length": False,
    "pre_lnorm": False,
    "untie_r": True,
    "activation": "relu",
    "layer_norm_epsilon": 1e-5,
    "memory_init": "zeros",
    "tie_word_embeddings": True,
    "torch_dtype": "float32",
}


def train_tokenizer(out_dir, vocab_size, seed):
    licences = sorted(glob.glob("/usr/share/common-licenses/*"))
    licences = [p for p in licences if os.path.isfile(p)]
    if not licences:
        sys.exit("make_tiny_model: no texts under /usr/share/common-licenses")
    with tempfile.TemporaryDirectory() as tmp:
        corpus = os.path.join(tmp, "corpus.txt")
        with open(corpus, "w", encoding="utf-8") as out:
            for path in licences:
                with open(path, encoding="utf-8", errors="ignore") as f:
                    out.write(f.read())
        subprocess.run(
            ["spm_train", f"--input={corpus}",
             f"--model_prefix={os.path.join(tmp, 'tokenizer')}",
             f"--vocab_size={vocab_size}", "--model_type=unigram",
             "--character_coverage=1.0", "--byte_fallback=true",
             "--num_threads=1", f"--random_seed={seed}",
             "--minloglevel=2"],
            check=True, stdout=subprocess.DEVNULL)
        shutil.copy(os.path.join(tmp, "tokenizer.model"),
                    os.path.join(out_dir, "tokenizer.model"))


def random_weights(cfg, seed):
    rng = np.random.default_rng(seed)
    d, hd, di, v = (cfg["d_model"], cfg["n_head"] * cfg["d_head"],
                    cfg["d_inner"], cfg["vocab_size"])

    def normal(*shape, std):
        return rng.normal(0.0, std, size=shape).astype(np.float32)

    t = {"word_emb.weight": normal(v, d, std=0.05)}
    for layer in range(cfg["n_layer"]):
        p = f"layers.{layer}."
        t[p + "attn.qkv.weight"] = normal(3 * hd, d, std=d ** -0.5)
        t[p + "attn.r.weight"] = normal(hd, d, std=d ** -0.5)
        t[p + "attn.o.weight"] = normal(d, hd, std=hd ** -0.5)
        t[p + "attn.ln.weight"] = 1.0 + normal(d, std=0.05)
        t[p + "attn.ln.bias"] = normal(d, std=0.05)
        t[p + "attn.r_w_bias"] = normal(cfg["n_head"], cfg["d_head"], std=0.1)
        t[p + "attn.r_r_bias"] = normal(cfg["n_head"], cfg["d_head"], std=0.1)
        t[p + "ff.fc1.weight"] = normal(di, d, std=d ** -0.5)
        t[p + "ff.fc1.bias"] = normal(di, std=0.05)
        t[p + "ff.fc2.weight"] = normal(d, di, std=di ** -0.5)
        t[p + "ff.fc2.bias"] = normal(d, std=0.05)
        t[p + "ff.ln.weight"] = 1.0 + normal(d, std=0.05)
        t[p + "ff.ln.bias"] = normal(d, std=0.05)
    t["lm_head.bias"] = normal(v, std=0.1)
    return t


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--vocab-size", type=int, default=1000)
    args = parser.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    train_tokenizer(args.out_dir, args.vocab_size, args.seed)
    cfg = dict(ARCH, vocab_size=args.vocab_size, eos_token_id=2)
    mnemo_checkpoint.write_config(args.out_dir, cfg)
    mnemo_checkpoint.save_numpy_safetensors(
        os.path.join(args.out_dir, mnemo_checkpoint.WEIGHTS_FILE), random_weights(cfg, args.seed))
    print(f"make_tiny_model: wrote {args.out_dir}")


if __name__ == "__main__":
    main()
