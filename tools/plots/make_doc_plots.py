#!/usr/bin/env python3
"""Regenerates the documentation's plots (docs/img/*.png) from committed bench results.

Reads only machine-readable results under bench/results/ and plots nothing else:
  bits-per-byte-vs-memory.png       default_models_quality.json, group "memory"
  stream-tokens-per-s.png           cpu-stream-20261123.jsonl, cpu-stream-long-context-20261123.jsonl
  server-latency-vs-concurrency.png server_bench-20261123T035736Z-65255d5.jsonl, figure "server_load"

Usage: /usr/bin/python3 tools/plots/make_doc_plots.py [--results DIR] [--out DIR]
Needs matplotlib (Debian: python3-matplotlib); draws with the Agg backend (no display).
"""

import argparse
import json
import pathlib
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

ROOT = pathlib.Path(__file__).resolve().parents[2]
QUALITY = "default_models_quality.json"
STREAM = "cpu-stream-20261123.jsonl"
STREAM_LONG = "cpu-stream-long-context-20261123.jsonl"
SERVER = "server_bench-20261123T035736Z-65255d5.jsonl"
DPI = 110


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def save(fig, out, name):
    path = out / name
    fig.savefig(path, dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


def plot_quality(results, out):
    """Bits per byte of the held-out test books against the evaluation memory length."""
    data = json.loads((results / QUALITY).read_text(encoding="utf-8"))
    rows = [r for r in data["rows"] if r["group"] == "memory"]
    fig, ax = plt.subplots(figsize=(7.5, 4.4))
    colors = {"teacher": "tab:blue", "student": "tab:orange"}
    for model in ("teacher", "student"):
        mine = [r for r in rows if r["model"] == model]
        none = [r for r in mine if r["mem_len"] == 0 and r["cmem_len"] == 0]
        xl = sorted((r for r in mine if r["mem_len"] > 0 and r["cmem_len"] == 0),
                    key=lambda r: r["mem_len"])
        comp = sorted((r for r in mine if r["cmem_len"] > 0), key=lambda r: r["mem_len"])
        c = colors[model]
        ax.plot([r["mem_len"] for r in xl], [r["bits_per_byte"] for r in xl], "o-", color=c,
                label=f"{model}: XL memory")
        if comp:
            ax.plot([r["mem_len"] for r in comp], [r["bits_per_byte"] for r in comp], "s--",
                    color=c, label=f"{model}: XL + compressive {comp[0]['cmem_len']} rows")
        for r in comp:
            if r["shipped"]:
                ax.plot(r["mem_len"], r["bits_per_byte"], "*", color=c, markersize=16,
                        markeredgecolor="black", zorder=5)
                ax.annotate(f"shipped {r['bits_per_byte']:.3f}", (r["mem_len"], r["bits_per_byte"]),
                            textcoords="offset points", xytext=(10, 5), fontsize=8)
        for r in none:
            ax.axhline(r["bits_per_byte"], color=c, linestyle=":", linewidth=1.2,
                       label=f"{model}: no memory ({r['bits_per_byte']:.3f})")
    ax.set_xscale("log", base=2)
    ticks = sorted({r["mem_len"] for r in rows if r["mem_len"] > 0})
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(t) for t in ticks])
    ax.set_xlabel("XL memory length at evaluation (tokens per layer)")
    ax.set_ylabel("bits per byte (lower is better)")
    meta = data["metadata"]
    ax.set_title(f"Default models on the held-out KJV test books "
                 f"({meta['text']['scored_bytes']:,} bytes, segments of {meta['segment_len']})",
                 fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="center right", ncol=2)
    save(fig, out, "bits-per-byte-vs-memory.png")


def stream_kind(row):
    """The layer kind of a stream record: named in the record, or (older records) read off its
    state, as bench/RESULTS.md's table of that run does."""
    if "kind" in row:
        return row["kind"]
    model = row["model"]
    dense_bytes = model["n_layer"] * 2 * model["mem_len"] * model["n_head"] * model["d_head"] * 4
    if row["memory_rows"] == 0:
        return "linear (elu)"
    if row["state_bytes"] == dense_bytes:
        return "dense (XL memory 512)"
    return "sliding window 512"


def plot_stream(results, out):
    """Tokens/s in each tenth of a 1M-token stream through one session, per layer kind."""
    runs = {}
    for name in (STREAM, STREAM_LONG):
        for row in read_jsonl(results / name):
            if row.get("figure") != "stream" or row.get("tokens") != 1 << 20:
                continue
            if "before" in row.get("note", ""):  # superseded by a later run of the same kind
                continue
            runs[stream_kind(row)] = row  # the last run of a kind wins (as bench/RESULTS.md)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.4), gridspec_kw={"width_ratios": [3, 2]})
    for kind, row in sorted(runs.items(), key=lambda kv: -kv[1]["tokens_per_s_by_tenth"][0]):
        tenths = row["tokens_per_s_by_tenth"]
        n = row["tokens"]
        xs = [(i + 0.5) * n / len(tenths) / 1e6 for i in range(len(tenths))]
        line, = ax.plot(xs, tenths, "o-", markersize=3, label=kind)
        ax2.plot([0, n / 1e6], [row["state_bytes_after_first_segment"] / 2**20,
                                row["state_bytes_end"] / 2**20], "o-", color=line.get_color(),
                 markersize=3)
    ax.set_yscale("log")
    ax.set_xlim(0, 1.05)
    ax.set_xlabel("position in the document (million tokens)")
    ax.set_ylabel("tokens/s (mean over each tenth)")
    ax.set_title("Streaming 1,048,576 tokens through one session (CPU, 2 vCPUs)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=4)
    ax2.set_yscale("log")
    ax2.set_xlim(-0.05, 1.1)
    ax2.set_xlabel("position in the document (million tokens)")
    ax2.set_ylabel("session state (MiB)")
    ax2.set_title("State after the first segment and at the end\n(colours as on the left)",
                  fontsize=10)
    ax2.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    save(fig, out, "stream-tokens-per-s.png")


def plot_server(results, out):
    """Latency and throughput of mnemo-server against the number of concurrent sessions."""
    rows = read_jsonl(results / SERVER)
    models, current = {}, None
    for row in rows:  # server_load lines follow the model_info line of their model
        if row.get("figure") == "model_info":
            current = row
        elif row.get("figure") == "server_load":
            models.setdefault(row.get("model", current["model"]), (current, []))[1].append(row)
    fig, axes = plt.subplots(1, len(models) + 1, figsize=(5 * (len(models) + 1), 4.2))
    for ax, (name, (info, loads)) in zip(axes, models.items()):
        loads.sort(key=lambda r: r["sessions"])
        s = [r["sessions"] for r in loads]
        for key, style, label in (("ttft_p50_ms", "o-", "time to first token, p50"),
                                  ("ttft_p99_ms", "o--", "time to first token, p99"),
                                  ("itl_p50_ms", "s-", "inter-token latency, p50"),
                                  ("itl_p99_ms", "s--", "inter-token latency, p99")):
            ax.plot(s, [r[key] for r in loads], style, label=label,
                    color="tab:red" if key.startswith("ttft") else "tab:blue")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(s)
        ax.set_xticklabels([str(x) for x in s])
        ax.set_xlabel("concurrent sessions")
        ax.set_ylabel("ms")
        ax.set_title(f"{info['n_layer']} layers, d_model {info['d_model']}, memory "
                     f"{info['mem_len']}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    ax = axes[-1]
    for name, (info, loads) in models.items():
        ax.plot([r["sessions"] for r in loads], [r["tokens_per_s"] for r in loads], "o-",
                label=f"{info['n_layer']} layers, d_model {info['d_model']}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ticks = sorted({r["sessions"] for _, loads in models.values() for r in loads})
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(x) for x in ticks])
    ax.set_xlabel("concurrent sessions")
    ax.set_ylabel("generated tokens/s, all sessions")
    ax.set_title("Throughput", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle("mnemo-server over gRPC on loopback, CPU, 2 vCPUs shared with the load "
                 "generator", fontsize=10)
    fig.tight_layout()
    save(fig, out, "server-latency-vs-concurrency.png")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=pathlib.Path, default=ROOT / "bench" / "results")
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "docs" / "img")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for plot in (plot_quality, plot_stream, plot_server):
        plot(args.results, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
