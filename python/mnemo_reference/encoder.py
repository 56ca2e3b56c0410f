"""The PyTorch reference of the encoder kinds without a published Hugging Face layout: Linformer
and Synthesizer (docs/checkpoint-format.md "Encoders"), written from the papers and the format's
text, independently of the engine. BERT post-LayerNorm blocks; positions from 0.

    config = linformer_config(...) / synthesizer_config(...)
    tensors = random_tensors(config, seed)          # {mnemo name: float64 tensor}
    hidden = encode(config, tensors, ids)           # [len(ids), d_model], float64

Linformer (Wang et al. 2020): per layer, E and F [k, n_max] project each head's keys and values
along the sequence; a pass of N ≤ n_max tokens uses their first N columns.
Synthesizer (Tay et al. 2021): the attention weights are synthesized, per head, without queries
or keys: dense, logits[i] = W2_h · relu(W1·x_i + b1)_h + b2_h (over positions); random, a learned
matrix R_h [n_max, n_max]; the softmax runs over the pass's N positions.
"""

import math

import torch

ACTIVATIONS = {
    "gelu": lambda x: torch.nn.functional.gelu(x),
    "gelu_tanh": lambda x: torch.nn.functional.gelu(x, approximate="tanh"),
    "relu": torch.relu,
    "silu": torch.nn.functional.silu,
}


def _common(vocab_size, d_model, n_layer, n_head, d_inner, segment_len, activation):
    return {"vocab_size": vocab_size, "d_model": d_model, "n_layer": n_layer, "n_head": n_head,
            "d_head": d_model // n_head, "d_inner": d_inner, "activation": activation,
            "layer_norm_epsilon": 1e-5, "pad_token_id": 1, "position_rows": segment_len,
            "type_vocab_size": 1, "segment_len": segment_len, "torch_dtype": "float32"}


def linformer_config(vocab_size=60, d_model=32, n_layer=2, n_head=4, d_inner=64, segment_len=24,
                     k=6, activation="gelu"):
    c = _common(vocab_size, d_model, n_layer, n_head, d_inner, segment_len, activation)
    return dict(c, architecture="linformer", linformer_k=k)


def synthesizer_config(vocab_size=60, d_model=32, n_layer=2, n_head=4, d_inner=64,
                       segment_len=24, kind="dense", activation="gelu"):
    c = _common(vocab_size, d_model, n_layer, n_head, d_inner, segment_len, activation)
    return dict(c, architecture="synthesizer", synthesizer=kind)


def random_tensors(config, seed=0):
    """Every tensor of the checkpoint format for `config`, N(0, 0.5²/d_model) (LayerNorm weights
    around 1), float64."""
    gen = torch.Generator().manual_seed(int(seed))
    d, f, h = config["d_model"], config["d_inner"], config["n_head"]
    seg, std = config["segment_len"], 0.5 / math.sqrt(config["d_model"])

    def draw(*shape, around=0.0):
        return around + torch.randn(*shape, generator=gen, dtype=torch.float64) * std

    t = {"embeddings.word.weight": draw(config["vocab_size"], d),
         "embeddings.position.weight": draw(config["position_rows"], d),
         "embeddings.token_type.weight": draw(config["type_vocab_size"], d),
         "embeddings.ln.weight": draw(d, around=1.0), "embeddings.ln.bias": draw(d)}
    for n in range(config["n_layer"]):
        p = f"layers.{n}."
        if config["architecture"] == "linformer":
            t[p + "attn.qkv.weight"], t[p + "attn.qkv.bias"] = draw(3 * d, d), draw(3 * d)
            k = config["linformer_k"]
            # E and F average-like projections plus noise, so every column matters.
            t[p + "attn.proj_k.weight"] = draw(k, seg) * 4
            t[p + "attn.proj_v.weight"] = draw(k, seg) * 4
        else:
            t[p + "attn.v.weight"], t[p + "attn.v.bias"] = draw(d, d), draw(d)
            if config["synthesizer"] == "dense":
                t[p + "attn.synth1.weight"], t[p + "attn.synth1.bias"] = draw(d, d), draw(d)
                t[p + "attn.synth2.weight"] = draw(h, seg, d // h) * 8
                t[p + "attn.synth2.bias"] = draw(h, seg)
            else:
                t[p + "attn.random.weight"] = draw(h, seg, seg) * 8
        t[p + "attn.o.weight"], t[p + "attn.o.bias"] = draw(d, d), draw(d)
        t[p + "attn.ln.weight"], t[p + "attn.ln.bias"] = draw(d, around=1.0), draw(d)
        t[p + "ff.fc1.weight"], t[p + "ff.fc1.bias"] = draw(f, d), draw(f)
        t[p + "ff.fc2.weight"], t[p + "ff.fc2.bias"] = draw(d, f), draw(d)
        t[p + "ff.ln.weight"], t[p + "ff.ln.bias"] = draw(d, around=1.0), draw(d)
    return t


def _attention(config, t, p, x):
    """One layer's attention output (before W_o) for the pass x [N, D]."""
    n, d, h = x.shape[0], config["d_model"], config["n_head"]
    dh = d // h
    if config["architecture"] == "linformer":
        qkv = x @ t[p + "attn.qkv.weight"].T + t[p + "attn.qkv.bias"]
        q, k, v = (qkv[:, i * d:(i + 1) * d].reshape(n, h, dh).transpose(0, 1) for i in range(3))
        e = t[p + "attn.proj_k.weight"][:, :n]
        f = t[p + "attn.proj_v.weight"][:, :n]
        pk, pv = e @ k, f @ v                                  # [h, k, dh]
        probs = torch.softmax(q @ pk.transpose(1, 2) / math.sqrt(dh), dim=-1)
        out = probs @ pv                                       # [h, N, dh]
    else:
        v = (x @ t[p + "attn.v.weight"].T + t[p + "attn.v.bias"]).reshape(n, h, dh).transpose(0, 1)
        if config["synthesizer"] == "dense":
            hidden = torch.relu(x @ t[p + "attn.synth1.weight"].T + t[p + "attn.synth1.bias"])
            hidden = hidden.reshape(n, h, dh).transpose(0, 1)  # [h, N, dh]
            w2 = t[p + "attn.synth2.weight"][:, :n, :]         # [h, N, dh]
            logits = hidden @ w2.transpose(1, 2) + t[p + "attn.synth2.bias"][:, None, :n]
        else:
            logits = t[p + "attn.random.weight"][:, :n, :n]
        out = torch.softmax(logits, dim=-1) @ v
    return out.transpose(0, 1).reshape(n, d)


def encode(config, tensors, ids):
    """The final hidden states [len(ids), D] of one pass (len(ids) ≤ segment_len), float64."""
    t = {k: v.to(torch.float64) for k, v in tensors.items()}
    n, eps = len(ids), config["layer_norm_epsilon"]
    assert 0 < n <= config["segment_len"]
    ln = torch.nn.functional.layer_norm
    idx = torch.tensor(ids)
    x = (t["embeddings.word.weight"][idx] + t["embeddings.position.weight"][:n] +
         t["embeddings.token_type.weight"][0])
    d = config["d_model"]
    x = ln(x, (d,), t["embeddings.ln.weight"], t["embeddings.ln.bias"], eps)
    act = ACTIVATIONS[config["activation"]]
    for layer in range(config["n_layer"]):
        p = f"layers.{layer}."
        a = _attention(config, t, p, x) @ t[p + "attn.o.weight"].T + t[p + "attn.o.bias"]
        x = ln(x + a, (d,), t[p + "attn.ln.weight"], t[p + "attn.ln.bias"], eps)
        hdn = act(x @ t[p + "ff.fc1.weight"].T + t[p + "ff.fc1.bias"])
        x = ln(x + hdn @ t[p + "ff.fc2.weight"].T + t[p + "ff.fc2.bias"], (d,),
               t[p + "ff.ln.weight"], t[p + "ff.ln.bias"], eps)
    return x.numpy()
