#!/usr/bin/env python3
"""Random-weight Transformer-XL checkpoint in mnemo's format, for benchmarks.

Defaults are sized like transfo-xl-wt103 (18 layers, d_model 1024, 16 heads
x 64, d_inner 4096, mem_len 1600, clamp_len 1000, same_length, post-LN,
ReLU, per-layer r_w/r_r biases, tied input/output embedding), except that
wt103's adaptive softmax is replaced by a dense vocabulary of 32000: about
278M float32 parameters (1.1 GB).

The model is built by mnemo_reference (python/mnemo_reference; its state_dict names
are the checkpoint's tensor names and its config validation is the format's),
then every parameter is drawn from one seeded CPU generator, in place:
LayerNorm weights 1 and biases 0, every other tensor normal(0, --init-std).
A small std (0.02 by default, the usual Transformer init) keeps activations
and logits finite through all layers; the values do not change the timing of
an f32 forward.

Writes DIR/config.json, DIR/model.safetensors and DIR/bench-model.json (the
generator settings: seed and init std, which config.json cannot hold). Nothing
is done when all three already describe the requested model. The weights are
written under a temporary name and renamed, and config.json/bench-model.json
come last, so an interrupted run is never mistaken for a finished one.

Prints one JSON line: {"impl": "model", "figure": "checkpoint", ...}.

Usage (from the repository root, with the import roots of python/README.md):
    python -m bench.benchlib.make_bench_model --out DIR [--n-layer 18 --d-model 1024 --n-head 16
        --d-head 64 --d-inner 4096 --vocab 32000 --mem-len 1600
        --clamp-len 1000 --same-length|--no-same-length --seed 0
        --init-std 0.02]
"""

import argparse
import json
import os
import sys
import time

import torch

from mnemo_checkpoint import CONFIG_FILE, WEIGHTS_FILE, save_tensors, write_json

STAMP_FILE = "bench-model.json"


def bench_config(args):
    """config.json contents (docs/checkpoint-format.md) for the options."""
    return {
        "architecture": "transfo_xl",
        "vocab_size": args.vocab,
        "d_model": args.d_model,
        "n_layer": args.n_layer,
        "n_head": args.n_head,
        "d_head": args.d_head,
        "d_inner": args.d_inner,
        "mem_len": args.mem_len,
        "clamp_len": args.clamp_len,
        "same_length": args.same_length,
        "pre_lnorm": False,
        "untie_r": True,
        "activation": "relu",
        "layer_norm_epsilon": 1e-5,
        "memory_init": "zeros",
        "tie_word_embeddings": True,
        "torch_dtype": args.dtype,
        **({"layers": json.loads(args.layers)} if args.layers else {}),
    }


def read_json(path):
    """The JSON of `path`, None when it is missing or unreadable."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def up_to_date(out, config, stamp):
    return (os.path.isfile(os.path.join(out, WEIGHTS_FILE))
            and read_json(os.path.join(out, CONFIG_FILE)) == config
            and read_json(os.path.join(out, STAMP_FILE)) == stamp)


@torch.no_grad()
def random_state_dict(config, seed, std):
    """Seeded random tensors for every checkpoint tensor of `config`."""
    import mnemo_reference
    model = mnemo_reference.TransfoXLReference(config)  # validates config
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("ln.weight"):
            p.fill_(1.0)
        elif name.endswith("ln.bias"):
            p.zero_()
        else:
            p.normal_(0.0, std, generator=gen)
    return {name: t.contiguous() for name, t in model.state_dict().items()}


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16,
          "float16": torch.float16}


def make(out, config, seed, std):
    """Writes the checkpoint unless it is there already; returns its line."""
    stamp = {"seed": seed, "init_std": std,
             "init": "LayerNorm weight 1, bias 0; other tensors normal(0, "
                     "init_std); torch.Generator seeded with seed"}
    line = {"impl": "model", "figure": "checkpoint", "dir": out,
            "config": config, **stamp}
    t0 = time.perf_counter()
    if up_to_date(out, config, stamp):
        line["created"] = False
    else:
        os.makedirs(out, exist_ok=True)
        for name in (STAMP_FILE, CONFIG_FILE):  # invalidate first
            if os.path.exists(os.path.join(out, name)):
                os.remove(os.path.join(out, name))
        # Same draws for every dtype; a 16-bit checkpoint stores them rounded.
        dtype = DTYPES[config["torch_dtype"]]
        tensors = {name: t.to(dtype).contiguous()
                   for name, t in random_state_dict(config, seed, std).items()}
        save_tensors(out, tensors)
        write_json(os.path.join(out, CONFIG_FILE), config)
        write_json(os.path.join(out, STAMP_FILE), stamp)
        line["created"] = True
    line["params"] = params_of(config)
    line["weights_bytes"] = os.path.getsize(os.path.join(out, WEIGHTS_FILE))
    line["wall_s"] = round(time.perf_counter() - t0, 2)
    return line


def params_of(c):
    """Parameter count implied by the config (tied, untie_r, no lm_head)."""
    d, hd, f, v = c["d_model"], c["n_head"] * c["d_head"], c["d_inner"], \
        c["vocab_size"]
    layer = (3 * hd * d + hd * d + d * hd + 2 * d + 2 * hd
             + f * d + f + d * f + d + 2 * d)
    return c["n_layer"] * layer + v * d + v


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="checkpoint directory")
    ap.add_argument("--n-layer", type=int, default=18)
    ap.add_argument("--d-model", type=int, default=1024)
    ap.add_argument("--n-head", type=int, default=16)
    ap.add_argument("--d-head", type=int, default=64)
    ap.add_argument("--d-inner", type=int, default=4096)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--mem-len", type=int, default=1600)
    ap.add_argument("--clamp-len", type=int, default=1000)
    ap.add_argument("--same-length", action=argparse.BooleanOptionalAction,
                    default=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--init-std", type=float, default=0.02)
    ap.add_argument("--layers", default="",
                    help="config.json's \"layers\" list as JSON (per-layer attention "
                         "kinds; docs/checkpoint-format.md); default: every layer dense")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                    help="storage type of every tensor (mnemo's CUDA backend keeps "
                         "16-bit weights as they are)")
    args = ap.parse_args(argv)
    line = make(args.out, bench_config(args), args.seed, args.init_std)
    print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
