#!/usr/bin/env python3
"""PyTorch peers of mnemo_bench (bench/programs/): one figure per process, one JSON line.

Implementations (same weights: the HF model saved by the converter's
--save-hf and the mnemo checkpoint converted from it):

* ``hf_transfo_xl``: Hugging Face ``TransfoXLLMHeadModel`` (transformers 4.27).
  - decode: T = 1 calls of the LM head model passing ``mems`` (what
    ``generate()`` runs per token), logits of the token, next = argmax.
  - prefill: ``model.transformer(segment, mems)`` then the output layer on the
    segment's last position only. This is the peer at its best and does the
    same work as mnemo's LogitsMode::kLast; the LM head model's own forward
    would also compute [S, vocab] log-softmax for every position.
* ``hf_decoder``: a Hugging Face sliding-window decoder (``MistralForCausalLM``,
  ``Gemma2ForCausalLM``; transformers 4.44.2 of ``.venv-modern``, eager attention, float32):
  ``mem`` random tokens primed through the model into its key/value cache, then T = 1 calls
  passing ``past_key_values``, next = argmax (what ``generate()`` runs per token).
* ``pytorch_reference``: mnemo_reference (python/mnemo_reference, the independent
  oracle; not written for speed).
  - decode: ``model(ids[1, 1], mems)`` (its API; logits of the one token).
  - prefill: the reference's own layer loop, output layer on the last position
    only (same work as kLast; ``model.forward`` would compute all S logits).

``--logits all`` (prefill): every position's logits instead, the scoring use
case: HF's LM head model forward (log-softmax of every position) and the
reference's ``model.forward``; mnemo's counterpart is LogitsMode::kAll.

Memory: both peers get a full memory of ``mem`` rows of random hidden states
(standard normal, the scale of the layer inputs) instead of a priming pass:
their per-token work depends only on the memory's length, not its values, and
priming 1600 positions through the peers would cost minutes. (Hugging Face's
own first call also starts from ``mem_len`` rows, of zeros.)

Threads: ``OMP_WAIT_POLICY=PASSIVE`` is set before torch is imported (libgomp
and OpenBLAS pools fight on 2 cores otherwise). Each ``--threads`` setting
(``torch.set_num_threads``) is probed briefly; the best one is measured and
reported, with the probe results. OpenBLAS threads come from the environment
(``OPENBLAS_NUM_THREADS``), identical to mnemo's run.

Usage (from the repository root, with the import roots of python/README.md):
    python -m bench.peers.peer_pytorch --impl hf_transfo_xl|hf_decoder|pytorch_reference --figure prefill|decode
        --hf-dir DIR --ckpt-dir DIR [--segment S] [--mem M] [--runs N]
        [--warmup W] [--decode-steps K] [--threads 1,2]
    python -m bench.peers.peer_pytorch --check-parity --hf-dir DIR --ckpt-dir DIR [--ids-file F]
        [--mnemo-logits F]
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402



def peak_rss_mib():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def runtime_fields(threads, probes):
    """What a peer's result line says about its runtime: torch threads (and
    the probe rates that chose them), OpenBLAS and OpenMP settings, torch."""
    return {"threads": {"torch": threads,
                        "openblas_env": os.environ.get("OPENBLAS_NUM_THREADS", ""),
                        "probe_tokens_per_s": probes},
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
            "torch": torch.__version__}


def summary(values):
    return {"min": min(values), "median": statistics.median(values),
            "max": max(values)}


def token_stream(vocab, seed=1):
    gen = torch.Generator().manual_seed(seed)

    def take(n):
        return torch.randint(0, vocab, (1, n), generator=gen)
    return take


# --------------------------------------------------------------------------
# Hugging Face


class HfPeer:
    name = "hf_transfo_xl"

    def __init__(self, hf_dir, mem):
        from transformers import TransfoXLLMHeadModel
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.model = TransfoXLLMHeadModel.from_pretrained(hf_dir).eval()
        self.model.reset_memory_length(mem)
        cfg = self.model.config
        self.vocab, self.d_model, self.n_layer = (cfg.vocab_size, cfg.d_model,
                                                  cfg.n_layer)
        self.mem = mem
        out = self.model.crit.out_layers[0]
        self.out_w, self.out_b = out.weight, out.bias

    def full_mems(self, gen):
        # HF memory: per layer [mem_len, batch, d_model] (time-major).
        return [torch.randn(self.mem, 1, self.d_model, generator=gen)
                for _ in range(self.n_layer)]

    @torch.no_grad()
    def decode_step(self, token, mems):
        out = self.model(input_ids=token, mems=mems)
        return out.prediction_scores[0, -1], out.mems

    @torch.no_grad()
    def prefill_all(self, ids, mems):
        # The LM head model's own forward: log-softmax of every position.
        out = self.model(input_ids=ids, mems=mems)
        return out.prediction_scores[0], out.mems

    @torch.no_grad()
    def prefill(self, ids, mems):
        out = self.model.transformer(input_ids=ids, mems=mems)
        last = out.last_hidden_state[:, -1]
        logits = F.linear(last, self.out_w, self.out_b)
        return logits[0], out.mems


# --------------------------------------------------------------------------
# The independent reference


class ReferencePeer:
    name = "pytorch_reference"

    def __init__(self, ckpt_dir, mem):
        import mnemo_reference
        self.model = mnemo_reference.load_checkpoint(ckpt_dir)
        cfg = self.model.config
        if cfg["mem_len"] != mem:
            raise SystemExit(f"{ckpt_dir}: mem_len {cfg['mem_len']} != --mem {mem}")
        self.vocab, self.d_model, self.n_layer = (cfg["vocab_size"],
                                                  cfg["d_model"],
                                                  cfg["n_layer"])
        self.mem = mem

    def full_mems(self, gen):
        # Reference memory: per layer [batch, M, d_model] (batch-major).
        return [torch.randn(1, self.mem, self.d_model, generator=gen)
                for _ in range(self.n_layer)]

    @torch.no_grad()
    def decode_step(self, token, mems):
        logits, mems = self.model(token, mems)
        return logits[0, -1], mems

    @torch.no_grad()
    def prefill_all(self, ids, mems):
        logits, mems = self.model(ids, mems)
        return logits[0], mems

    @torch.no_grad()
    def prefill(self, ids, mems):
        # Output layer on the last position only (LogitsMode::kLast's work).
        logits, mems = self.model(ids, mems, last_only=True)
        return logits[0, -1], mems


# --------------------------------------------------------------------------
# Timing


class HfDecoderPeer:
    """A Hugging Face sliding-window decoder (MistralForCausalLM, Gemma2ForCausalLM; eager
    attention, float32) with its key/value cache: `mem` tokens primed, then one token per call.
    Needs .venv-modern's transformers."""
    name = "hf_decoder"

    def __init__(self, hf_dir, mem):
        from transformers import AutoModelForCausalLM
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.model = AutoModelForCausalLM.from_pretrained(
                hf_dir, torch_dtype=torch.float32, attn_implementation="eager").eval()
        self.name = f"hf_{self.model.config.model_type}"
        self.vocab = self.model.config.vocab_size
        self.mem = mem

    def full_mems(self, gen):
        from transformers import DynamicCache  # (what generate() passes)
        ids = torch.randint(0, self.vocab, (1, self.mem), generator=gen)
        return self.model(ids, past_key_values=DynamicCache(), use_cache=True).past_key_values

    def decode_step(self, token, mems):
        out = self.model(token, past_key_values=mems, use_cache=True)
        return out.logits[0, -1], out.past_key_values


def measure(peer, figure, segment, runs, warmup, steps, seed=1,
            all_logits=False):
    """Returns a list of tokens/s, one per run."""
    gen = torch.Generator().manual_seed(seed)
    mems = peer.full_mems(gen)
    take = token_stream(peer.vocab, seed)
    rates = []
    if figure == "prefill":
        for r in range(warmup + runs):
            ids = take(segment)
            t0 = time.perf_counter()
            if all_logits:
                _, mems = peer.prefill_all(ids, mems)
            else:
                _, mems = peer.prefill(ids, mems)
            dt = time.perf_counter() - t0
            if r >= warmup:
                rates.append(segment / dt)
    else:
        token = take(1)
        for _ in range(warmup):
            logits, mems = peer.decode_step(token, mems)
            token = logits.argmax().view(1, 1)
        for _ in range(runs):
            t0 = time.perf_counter()
            for _ in range(steps):
                logits, mems = peer.decode_step(token, mems)
                token = logits.argmax().view(1, 1)
            rates.append(steps / (time.perf_counter() - t0))
    return rates


def run_figure(args):
    torch.manual_seed(0)
    if args.impl == "hf_transfo_xl":
        peer = HfPeer(args.hf_dir, args.mem)
    elif args.impl == "hf_decoder":
        peer = HfDecoderPeer(args.hf_dir, args.mem)
    else:
        peer = ReferencePeer(args.ckpt_dir, args.mem)
    segment = args.segment if args.figure == "prefill" else 1
    threads = [int(t) for t in args.threads.split(",") if t]
    probes = {}
    for t in threads if len(threads) > 1 else []:
        torch.set_num_threads(t)
        if args.figure == "prefill":
            rates = measure(peer, "prefill", segment, 1, 1, 0,
                            all_logits=args.logits == "all")
        else:
            rates = measure(peer, "decode", 1, 1, 1, args.probe_steps)
        probes[str(t)] = rates[0]
    best = max(threads, key=lambda t: probes.get(str(t), 0.0))
    torch.set_num_threads(best)
    rates = measure(peer, args.figure, segment, args.runs, args.warmup,
                    args.decode_steps, all_logits=args.logits == "all")
    line = {
        "impl": peer.name, "figure": args.figure, "segment": segment,
        "mem": args.mem,
        "logits": args.logits if args.figure == "prefill" else "last",
        "tokens_per_s": summary(rates), "runs": args.runs,
        "tokens_per_run": segment if args.figure == "prefill"
        else args.decode_steps,
        "peak_rss_mib": peak_rss_mib(),
        **runtime_fields(best, probes),
    }
    if peer.name.startswith("hf_"):
        import transformers
        line["transformers"] = transformers.__version__
    print(json.dumps(line), flush=True)


@torch.no_grad()
def check_parity(args):
    """Same weights? Log-probabilities of HF, the reference and mnemo agree.

    Runs one fresh segment of ids (--ids-file, else 16 generated ids) through
    HF and the reference; with --mnemo-logits (raw float32 [n, vocab] written
    by `mnemo_bench --figure logits` for the same ids) compares mnemo too.
    """
    hf = HfPeer(args.hf_dir, args.mem)
    ref = ReferencePeer(args.ckpt_dir, args.mem)
    if args.ids_file:
        with open(args.ids_file) as f:
            ids = torch.tensor([[int(t) for t in f.read().split()]])
    else:
        ids = token_stream(hf.vocab, 7)(16)
    hf_logp = hf.model(input_ids=ids).prediction_scores[0]  # log-softmax
    ref_logits, _ = ref.model(ids)
    ref_logp = torch.log_softmax(ref_logits[0], dim=-1)
    line = {"impl": "check", "figure": "parity", "tokens": ids.shape[1],
            "max_abs_logprob_diff": {
                "hf_vs_reference": (hf_logp - ref_logp).abs().max().item()}}
    if args.mnemo_logits:
        import numpy as np
        raw = np.fromfile(args.mnemo_logits, dtype="<f4")
        mnemo = torch.from_numpy(raw.reshape(ids.shape[1], -1).copy())
        mnemo_logp = torch.log_softmax(mnemo, dim=-1)
        line["max_abs_logprob_diff"]["mnemo_vs_reference"] = (
            mnemo_logp - ref_logp).abs().max().item()
        line["max_abs_logprob_diff"]["mnemo_vs_hf"] = (
            mnemo_logp - hf_logp).abs().max().item()
    line["ok"] = all(v < 1e-3 for v in line["max_abs_logprob_diff"].values())
    print(json.dumps(line), flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--impl", choices=("hf_transfo_xl", "hf_decoder", "pytorch_reference"))
    ap.add_argument("--figure", choices=("prefill", "decode"))
    ap.add_argument("--hf-dir", required=True)
    ap.add_argument("--ckpt-dir", required=True)
    ap.add_argument("--segment", type=int, default=128)
    ap.add_argument("--mem", type=int, default=512)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--decode-steps", type=int, default=8)
    ap.add_argument("--probe-steps", type=int, default=3)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--logits", choices=("last", "all"), default="last",
                    help="prefill: logits of the last position (default) or "
                         "of every position (HF: the LM head model's forward,"
                         " log-softmax included)")
    ap.add_argument("--check-parity", action="store_true")
    ap.add_argument("--ids-file", help="--check-parity: token ids to run")
    ap.add_argument("--mnemo-logits",
                    help="--check-parity: mnemo's float32 logits of --ids-file")
    args = ap.parse_args(argv)
    if args.check_parity:
        check_parity(args)
        return 0
    if not args.impl or not args.figure:
        ap.error("--impl and --figure are required")
    run_figure(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
