"""The teacher trainer (tools/train/train_teacher.py) on a tiny compressive model.

A 30-step run on a small slice of the KJV export: the loss falls, the same seed gives a
bit-identical checkpoint, the trainer's gradient forward equals the reference's forward, the
reconstruction loss trains only the compression network, and the checkpoint loads in the
engine, whose `mnemo score` agrees with the trainer's own evaluation. Needs Debian's
bible-kjv-text and sentencepiece (tools/setup.sh test installs them); fails, never skips,
without. MNEMO_BIN (set by ctest) is the engine binary.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from tools.train import train_teacher as tt

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN = os.path.join(ROOT, "tools", "train")

torch.set_num_threads(1)

SEG = 8
TINY = ["--n-layer", "2", "--d-model", "32", "--n-head", "2", "--d-head", "16",
        "--d-inner", "64", "--mem-len", "16", "--cmem-len", "8", "--compression", "conv1d",
        "--compression-rate", "4", "--segment-len", str(SEG), "--batch-size", "4",
        "--steps", "30", "--warmup", "5", "--lr", "3e-3", "--threads", "1", "--seed", "7",
        "--log-every", "5", "--eval-every", "15", "--eval-tokens", "200"]


def run(script, *args):
    return subprocess.run([sys.executable, os.path.join(TRAIN, script), *args],
                          check=True, capture_output=True, text=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    for tool in ("bible", "spm_train", "spm_encode"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool!r} is missing: apt-get install bible-kjv-text sentencepiece",
                        pytrace=False)
    base = tmp_path_factory.mktemp("teacher")
    full = base / "kjv"
    run("export_kjv.py", str(full))
    small = base / "small"
    small.mkdir()
    for split, verses in (("train", 300), ("valid", 12)):
        with open(full / f"{split}.txt", encoding="utf-8") as f:
            lines = f.read().splitlines()[:verses]
        (small / f"{split}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    tok = run("train_tokenizer.py", str(small), str(base / "tok"),
              "--vocab-size", "400").stdout.strip()
    return {"base": base, "data": str(small), "tokenizer": tok}


@pytest.fixture(scope="module")
def trained(data):
    outs = []
    for name in ("a", "b"):
        out = data["base"] / name
        proc = run("train_teacher.py", data["data"], str(out), "--tokenizer",
                   data["tokenizer"], *TINY)
        outs.append((out, proc.stdout))
    return outs


def test_progress_and_loss_decreases(trained):
    out, stdout = trained[0]
    assert "step 30/30" in stdout and "tok/s" in stdout and "valid step 15" in stdout
    with open(out / "training.json") as f:
        rec = json.load(f)
    hist = rec["history"]
    assert len(hist) == 6 and hist[-1]["step"] == 30
    assert hist[-1]["loss"] < hist[0]["loss"] - 0.5, [h["loss"] for h in hist]
    assert hist[-1]["recon"] > 0  # compression happened and was trained
    assert rec["seed"] == 7 and rec["config"]["layers"][0]["memory"] == "compressive"
    assert "train_teacher.py" in rec["command"] and rec["wall_seconds"] > 0
    assert rec["valid"]["bits_per_byte"] > 0
    for name in ("config.json", "model.safetensors", "tokenizer.model"):
        assert (out / name).is_file()


def test_same_seed_gives_bit_identical_checkpoint(trained):
    def digest(path):
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    (a, _), (b, _) = trained
    assert digest(a / "model.safetensors") == digest(b / "model.safetensors")
    assert digest(a / "config.json") == digest(b / "config.json")


def test_checkpoint_is_bf16_and_loads_in_the_reference(trained):
    out, _ = trained[0]
    model = tt.ref.load_checkpoint(str(out))  # checks names, shapes and dtype
    assert model.config["torch_dtype"] == "bfloat16"


def test_engine_score_agrees_with_trainer_evaluation(trained, data, mnemo_bin):
    out, _ = trained[0]
    with open(out / "training.json") as f:
        valid = json.load(f)["valid"]
    assert valid["segment_len"] == SEG
    proc = subprocess.run([mnemo_bin, "score", "--model", str(out), "--text-file",
                           os.path.join(data["data"], "valid.txt"), "--segment-len", str(SEG),
                           "--json"], check=True, capture_output=True, text=True)
    summary = json.loads(proc.stdout.strip().splitlines()[-1])["summary"]
    assert summary["tokens"] == valid["tokens"]  # same tokenization as the trainer's
    assert summary["bytes"] == valid["bytes"]
    rel = abs(summary["bits_per_token"] - valid["bits_per_token"]) / valid["bits_per_token"]
    assert rel < 1e-3, (summary, valid)
    assert abs(summary["bits_per_byte"] - valid["bits_per_byte"]) < 1e-3 * valid["bits_per_byte"]


def _tiny_model():
    args = tt.parse_args(["d", "o", "--tokenizer", "t", *TINY])
    model = tt.ref.TransfoXLReference(tt.make_config(args, 50))
    tt.init_weights(model, 3, std=0.2)
    return model


def test_train_forward_equals_reference_forward():
    torch.manual_seed(0)
    model = _tiny_model().double()
    ids = torch.randint(0, 50, (2, 5 * SEG))
    mems_a = mems_b = None
    for s in range(5):
        seg = ids[:, s * SEG:(s + 1) * SEG]
        want, mems_a = model(seg, mems_a)
        if mems_b is None:
            mems_b = model.init_mems(2)
        got, mems_b, _ = tt.train_forward(model, seg, mems_b)
        assert torch.allclose(got, want, rtol=1e-10, atol=1e-10)


def test_reconstruction_loss_trains_only_the_compressor():
    torch.manual_seed(0)
    model = _tiny_model()
    ids = torch.randint(0, 50, (2, 5 * SEG))
    mems = model.init_mems(2)
    for s in range(4):
        logits, mems, recon = tt.train_forward(model, ids[:, s * SEG:(s + 1) * SEG], mems)
    assert float(recon) > 0
    lm = torch.nn.functional.cross_entropy(logits.reshape(-1, 50),
                                           ids[:, 3 * SEG + 1:4 * SEG + 1].reshape(-1))
    names = [n for n, _ in model.named_parameters()]
    g_recon = torch.autograd.grad(recon, list(model.parameters()), allow_unused=True)
    g_lm = torch.autograd.grad(lm, list(model.parameters()), allow_unused=True)
    for n, gr, gl in zip(names, g_recon, g_lm):
        if ".attn.compress." in n:
            assert gr is not None and gr.abs().sum() > 0, n
            assert gl is None or gl.abs().sum() == 0, n
        else:
            assert gr is None or gr.abs().sum() == 0, n
