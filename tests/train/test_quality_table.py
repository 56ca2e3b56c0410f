"""The quality table (tools/train/quality_table.py) on tiny checkpoints.

A 20-step tiny compressive teacher (mem_len 16, cmem_len 8, rate 4), a "student" that is a copy
of it and a 50% magnitude-pruned copy go through ``quality_table.py --quick`` with memory
lengths 0, 8 and 16 and the one-shot magnitude baselines: the rows are the expected ones, the
bits are finite and positive, the shipped teacher's row is exactly a direct `mnemo score` of
the same text, the "memory off" checkpoint (compressor tensors dropped) loads and scores
differently from the XL rows, the zero fractions are the pruned ones, only shipped
configurations are timed, and the Markdown has one line per row. Bad inputs fail with a clear
message. Needs Debian's bible-kjv-text and sentencepiece (tools/setup.sh test installs them);
fails, never skips, without. MNEMO_BIN (set by ctest) is the engine binary; mnemo_bench is
taken from the same directory.
"""

import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch

from tools.train import quality_table as qt
from tools.train import train_teacher as tt

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN = os.path.join(ROOT, "tools", "train")

torch.set_num_threads(1)

SEG = 8
TEACHER = ["--n-layer", "2", "--d-model", "32", "--n-head", "2", "--d-head", "16",
           "--d-inner", "64", "--mem-len", "16", "--cmem-len", "8", "--compression", "conv1d",
           "--compression-rate", "4", "--segment-len", str(SEG), "--batch-size", "4",
           "--steps", "20", "--warmup", "5", "--lr", "3e-3", "--threads", "1", "--seed", "7",
           "--log-every", "10", "--eval-every", "0"]
TEST_LINES = 60  # more than --quick's first QUICK_LINES lines, so --quick must cut the text
PRUNED = "teacher-magnitude-50"

# (group, model, variant, mem_len, cmem_len, shipped) of every row, in order.
EXPECTED_ROWS = [
    ("memory", "teacher", "memory off", 0, 0, False),
    ("memory", "teacher", "XL only", 8, 0, False),
    ("memory", "teacher", "XL only", 16, 0, False),
    ("memory", "teacher", "XL + compressive", 8, 8, False),
    ("memory", "teacher", "XL + compressive", 16, 8, True),
    ("memory", "student", "memory off", 0, 0, False),
    ("memory", "student", "XL only", 8, 0, False),
    ("memory", "student", "XL only", 16, 0, False),
    ("memory", "student", "XL + compressive", 8, 8, False),
    ("memory", "student", "XL + compressive", 16, 8, True),
    ("shipped", PRUNED, "as shipped", 16, 8, True),
    ("one-shot baseline", "teacher", "one-shot magnitude 50%", 16, 8, False),
    ("one-shot baseline", "teacher", "one-shot magnitude 80%", 16, 8, False),
    ("one-shot baseline", "teacher", "one-shot magnitude 90%", 16, 8, False),
    ("one-shot baseline", "teacher", "one-shot magnitude 2:4", 16, 8, False),
]


@pytest.fixture(scope="module")
def binaries(mnemo_bin):
    path = mnemo_bin
    bench = os.path.join(os.path.dirname(os.path.abspath(path)), "mnemo_bench")
    if not (os.path.isfile(bench) and os.access(bench, os.X_OK)):
        pytest.fail(f"mnemo_bench is missing next to MNEMO_BIN ({bench!r}); build it with "
                    f"cmake --build <build dir> --target mnemo_bench", pytrace=False)
    return {"mnemo": path, "bench": bench}


def run(args, ok=True):
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True)
    if ok and proc.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {proc.returncode}:\n{proc.stderr}", pytrace=False)
    return proc


def quality_table(binaries, *args, ok=True):
    return run([os.path.join(TRAIN, "quality_table.py"), "--mnemo", binaries["mnemo"],
                "--bench", binaries["bench"], *args], ok=ok)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    for tool in ("bible", "spm_train", "spm_encode"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool!r} is missing: apt-get install bible-kjv-text sentencepiece",
                        pytrace=False)
    base = tmp_path_factory.mktemp("quality")
    full = base / "kjv"
    run([os.path.join(TRAIN, "export_kjv.py"), str(full)])
    small = base / "small"
    small.mkdir()
    for split, verses in (("train", 300), ("valid", 12), ("test", TEST_LINES)):
        with open(full / f"{split}.txt", encoding="utf-8") as f:
            lines = f.read().splitlines()[:verses]
        (small / f"{split}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    tok = run([os.path.join(TRAIN, "train_tokenizer.py"), str(small), str(base / "tok"),
               "--vocab-size", "400"]).stdout.strip()
    models_dir = base / "models"
    teacher = models_dir / "teacher"
    run([os.path.join(TRAIN, "train_teacher.py"), str(small), str(teacher), "--tokenizer", tok,
         "--cache-dir", str(base / "cache"), *TEACHER])
    shutil.copytree(teacher, models_dir / "student")
    run([os.path.join(ROOT, "tools", "prune_checkpoint.py"), str(teacher),
         str(models_dir / PRUNED), "--sparsity", "0.5"])
    return {"base": base, "data": str(small), "models": str(models_dir)}


@pytest.fixture(scope="module")
def table(models, binaries):
    out = models["base"] / "quality.json"
    md = models["base"] / "quality.md"
    proc = quality_table(binaries, "--models", models["models"], "--data", models["data"],
                         "--out", str(out), "--markdown", str(md), "--quick",
                         "--memory-lengths", "0,8,16", "--segment-len", str(SEG),
                         "--magnitude-baseline")
    with open(out) as f:
        data = json.load(f)
    return {"json": data, "rows": data["rows"], "markdown": md.read_text(encoding="utf-8"),
            "stdout": proc.stdout}


def find(rows, model, variant, mem_len):
    key = (model, variant, mem_len)
    hits = [r for r in rows if (r["model"], r["variant"], r["mem_len"]) == key]
    assert len(hits) == 1, (model, variant, mem_len)
    return hits[0]


def test_rows_are_the_expected_ones(table):
    got = [(r["group"], r["model"], r["variant"], r["mem_len"], r["cmem_len"], r["shipped"])
           for r in table["rows"]]
    assert got == EXPECTED_ROWS


def test_bits_are_finite_and_positive_on_the_same_text(table):
    rows = table["rows"]
    for r in rows:
        for key in ("bits_per_token", "bits_per_byte"):
            assert math.isfinite(r[key]) and r[key] > 0, r
        assert r["parameters"] > 0 and r["checkpoint_bytes"] > 0
    # Every row scored the same (quick) text.
    assert len({(r["tokens"], r["scored_tokens"], r["bytes"]) for r in rows}) == 1
    meta = table["json"]["metadata"]
    assert meta["quick"] and meta["runs"] == 1 and meta["segment_len"] == SEG
    assert meta["text"]["lines"] == qt.QUICK_LINES
    assert meta["text"]["scored_tokens"] == rows[0]["scored_tokens"]
    assert meta["machine"]["cpus"] >= 1 and meta["date"] and meta["mnemo"]


def test_shipped_teacher_row_equals_a_direct_mnemo_score(table, models, binaries):
    row = find(table["rows"], "teacher", "XL + compressive", 16)
    assert row["shipped"] and row["dir"] == os.path.join(models["models"], "teacher")
    # --quick scores the first QUICK_LINES lines of test.txt, byte for byte.
    with open(os.path.join(models["data"], "test.txt"), "rb") as f:
        head = b"".join(f.readlines()[:qt.QUICK_LINES])
    text = models["base"] / "direct-quick.txt"
    text.write_bytes(head)
    proc = subprocess.run([binaries["mnemo"], "score", "--model", row["dir"], "--text-file",
                           str(text), "--segment-len", str(SEG), "--json"],
                          check=True, capture_output=True, text=True)
    summary = json.loads(proc.stdout.strip().splitlines()[-1])["summary"]
    for key in ("bits_per_token", "bits_per_byte", "total_bits", "tokens", "scored_tokens",
                "bytes"):
        assert row[key] == summary[key], key


def test_memory_off_loads_and_differs_from_xl(table):
    rows = table["rows"]
    off = find(rows, "teacher", "memory off", 0)
    xl = [find(rows, "teacher", "XL only", m) for m in (8, 16)]
    comp = find(rows, "teacher", "XL + compressive", 16)
    for r in xl:
        assert r["bits_per_token"] != off["bits_per_token"]
    # The compressor tensors are gone from the plain variants, not from the compressive ones.
    assert off["parameters"] == xl[0]["parameters"] < comp["parameters"]
    assert off["derived"] and off["dir"] is None
    assert off["state_bytes"] == 0 < xl[0]["state_bytes"] < xl[1]["state_bytes"] \
        < comp["state_bytes"]
    # The student is a copy of the teacher: the same numbers.
    for variant, mem in (("memory off", 0), ("XL only", 8), ("XL + compressive", 16)):
        assert find(rows, "student", variant, mem)["bits_per_token"] == \
            find(rows, "teacher", variant, mem)["bits_per_token"]


def test_derived_checkpoints_load_in_the_reference(models, tmp_path):
    src = os.path.join(models["models"], "teacher")
    for name, mem, keep in (("off", 0, False), ("xl8", 8, False), ("comp8", 8, True)):
        dst = str(tmp_path / name)
        qt.derive_checkpoint(src, dst, mem, keep)
        model = tt.ref.load_checkpoint(dst)  # exact tensor names, shapes and dtype
        assert model.config["mem_len"] == mem
        kinds = {e.get("memory", "xl") for e in model.config["layers"]}
        assert kinds == ({"compressive"} if keep else {"xl"})


def test_zero_fractions_and_timings(table):
    rows = table["rows"]
    assert find(rows, PRUNED, "as shipped", 16)["zero_fraction"] == pytest.approx(0.5, abs=1e-3)
    assert find(rows, "teacher", "XL + compressive", 16)["zero_fraction"] < 0.05
    for variant, zeros in (("50%", 0.5), ("80%", 0.8), ("90%", 0.9), ("2:4", 0.5)):
        r = find(rows, "teacher", f"one-shot magnitude {variant}", 16)
        assert r["zero_fraction"] == pytest.approx(zeros, abs=1e-3), r
        assert r["derived"]
    base90 = find(rows, "teacher", "one-shot magnitude 90%", 16)
    assert base90["bits_per_token"] != find(rows, "teacher", "XL + compressive", 16)[
        "bits_per_token"]
    for r in rows:
        timed = r["shipped"] or r["group"] == "one-shot baseline"
        assert r["timed"] == timed
        for key in ("decode_tokens_per_s", "prefill_tokens_per_s"):
            assert (r[key] is not None and r[key] > 0) if timed else r[key] is None, r
        assert r["state_bytes"] is not None


def test_markdown_has_a_header_and_one_line_per_row(table):
    md = table["markdown"]
    assert table["stdout"] == md
    lines = [line for line in md.splitlines() if line.startswith("|")]
    assert lines[0].startswith("| model | variant | mem | cmem | bits/token | bits/byte")
    assert set(lines[1]) <= set("|-: ")
    body = lines[2:]
    assert len(body) == len(table["rows"])
    for line, r in zip(body, table["rows"]):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == len(qt.MARKDOWN_COLUMNS)
        assert cells[0] == f"`{r['model']}`" and cells[2] == str(r["mem_len"])
        assert cells[4] == f"{r['bits_per_token']:.3f}"
    assert "(shipped)" in body[4] and "(shipped)" not in body[3]


def test_errors_are_clear(models, binaries, tmp_path):
    out = str(tmp_path / "q.json")
    proc = quality_table(binaries, "--models", str(tmp_path / "nowhere"), "--data",
                         models["data"], "--out", out, ok=False)
    assert proc.returncode != 0 and "does not exist" in proc.stderr
    proc = quality_table(binaries, "--models", models["models"], "--data", str(tmp_path),
                         "--out", out, ok=False)
    assert proc.returncode != 0 and "test.txt" in proc.stderr
    # A checkpoint the engine refuses: mnemo's own message is shown.
    broken = tmp_path / "models" / "teacher"
    shutil.copytree(os.path.join(models["models"], "teacher"), broken)
    cfg = json.loads((broken / "config.json").read_text())
    cfg["no_such_field"] = 1
    (broken / "config.json").write_text(json.dumps(cfg))
    proc = quality_table(binaries, "--models", str(tmp_path / "models"), "--data",
                         models["data"], "--out", out, "--quick", "--memory-models", "",
                         ok=False)
    assert proc.returncode != 0 and "mnemo score failed" in proc.stderr
    assert "no_such_field" in proc.stderr, proc.stderr
    assert not os.path.exists(out)
