"""The student distiller (tools/train/distill_student.py) on a tiny compressive teacher.

A 4-layer tiny teacher (layers 0, 1 and 3 compressive, layer 2 plain XL memory) is trained for
200 steps with train_teacher.py on a small slice of the KJV export, then distilled for 20 steps
into a 2-layer student (teacher layers 0 and 2: one compressive, one XL layer). Checks: the
student's config and its initial weights are the picked teacher layers, the distillation loss
falls, the same seed gives a bit-identical checkpoint, `mnemo score` on the student agrees with
the distiller's own evaluation, and bad arguments fail with a clear message. Needs Debian's
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

import mnemo_checkpoint

from tools.train import distill_student as ds

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN = os.path.join(ROOT, "tools", "train")

torch.set_num_threads(1)

SEG = 8
TEACHER = ["--n-layer", "4", "--d-model", "32", "--n-head", "2", "--d-head", "16",
           "--d-inner", "64", "--mem-len", "16", "--cmem-len", "8", "--compression", "conv1d",
           "--compression-rate", "4", "--compressive-layers", "0,1,3",
           "--segment-len", str(SEG), "--batch-size", "4", "--steps", "200", "--warmup", "5",
           "--lr", "3e-3", "--threads", "1", "--seed", "7", "--log-every", "50",
           "--eval-every", "0"]
STUDENT = ["--segment-len", str(SEG), "--batch-size", "4", "--steps", "20", "--warmup", "5",
           "--lr", "3e-3", "--threads", "1", "--seed", "5", "--log-every", "5",
           "--eval-every", "10", "--eval-tokens", "200"]


def run(script, *args, check=True):
    return subprocess.run([sys.executable, os.path.join(TRAIN, script), *args],
                          check=check, capture_output=True, text=True)


def digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    for tool in ("bible", "spm_train", "spm_encode"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool!r} is missing: apt-get install bible-kjv-text sentencepiece",
                        pytrace=False)
    base = tmp_path_factory.mktemp("student")
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
    teacher = base / "teacher"
    run("train_teacher.py", str(small), str(teacher), "--tokenizer", tok, *TEACHER)
    return {"base": base, "data": str(small), "teacher": teacher}


@pytest.fixture(scope="module")
def distilled(data):
    """Two 20-step runs with the same seed, and the initial student (--max-steps 0)."""
    outs = {}
    for name, extra in (("a", []), ("b", []), ("init", ["--max-steps", "0"])):
        out = data["base"] / name
        proc = run("distill_student.py", data["data"], str(data["teacher"]), str(out),
                   *STUDENT, *extra)
        outs[name] = (out, proc.stdout)
    return outs


def record(out):
    with open(out / "training.json") as f:
        return json.load(f)


def test_student_has_the_picked_half_of_the_layers(distilled, data):
    with open(data["teacher"] / "config.json") as f:
        teacher_cfg = json.load(f)
    out, _ = distilled["a"]
    with open(out / "config.json") as f:
        cfg = json.load(f)
    assert cfg["n_layer"] == 2
    assert cfg["layers"] == [teacher_cfg["layers"][0], teacher_cfg["layers"][2]]
    assert cfg["layers"][0]["memory"] == "compressive" and "memory" not in cfg["layers"][1]
    assert cfg["torch_dtype"] == teacher_cfg["torch_dtype"] == "bfloat16"
    model = ds.ref.load_checkpoint(str(out))  # checks names, shapes and dtype
    assert len(model.stack) == 2
    assert (out / "tokenizer.model").read_bytes() == (data["teacher"] / "tokenizer.model"
                                                      ).read_bytes()
    rec = record(out)
    assert rec["layers"] == [0, 2] and rec["teacher"]["config"]["n_layer"] == 4
    assert rec["teacher"]["parameters"] > rec["parameters"] > 0
    assert rec["teacher"]["model_sha256"] == digest(data["teacher"] / "model.safetensors")
    assert (rec["temperature"], rec["alpha_ce"], rec["alpha_clm"], rec["alpha_cos"]) == (
        2.0, 5.0, 2.0, 1.0)


def test_initial_student_is_the_picked_teacher_layers(distilled, data):
    out, _ = distilled["init"]
    assert record(out)["steps"] == 0
    teacher = mnemo_checkpoint.load_tensors(data["teacher"])
    student = mnemo_checkpoint.load_tensors(out)
    picked = [0, 2]
    assert len(student) < len(teacher)
    for name, tensor in student.items():
        if name.startswith("layers."):
            _, n, rest = name.split(".", 2)
            src = f"layers.{picked[int(n)]}.{rest}"
        else:
            src = name
        assert torch.equal(tensor, teacher[src]), name
    assert any(".attn.compress." in n for n in student)      # the compressor came along
    assert any(n.endswith("attn.r_r_bias") for n in student)  # untied r biases too


def test_student_state_maps_any_picked_layers():
    cfg = {"architecture": "transfo_xl", "vocab_size": 20, "d_model": 8, "n_layer": 4,
           "n_head": 2, "d_head": 4, "d_inner": 16, "mem_len": 8, "clamp_len": 0,
           "same_length": False, "pre_lnorm": False, "untie_r": True, "activation": "gelu",
           "layer_norm_epsilon": 1e-5, "memory_init": "empty", "tie_word_embeddings": False,
           "torch_dtype": "bfloat16",
           "layers": [{"attention": "dense"}, {"attention": "dense", "memory": "compressive",
                                               "compression": "conv1d",
                                               "compression_rate": 2, "cmem_len": 4},
                      {"attention": "dense"}, {"attention": "dense"}]}
    teacher = ds.ref.TransfoXLReference(cfg)
    with torch.no_grad():
        for i, p in enumerate(teacher.parameters()):
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(i)))
    student = ds.make_student(teacher, [3, 1], "float16")
    assert student.config["layers"] == [cfg["layers"][3], cfg["layers"][1]]
    assert student.config["torch_dtype"] == "float16"
    t = teacher.state_dict()
    for name, tensor in student.state_dict().items():
        assert torch.equal(tensor, t[ds.teacher_tensor_name(name, [3, 1])]), name
    assert torch.equal(student.state_dict()["layers.0.ff.fc1.weight"], t["layers.3.ff.fc1.weight"])
    assert torch.equal(student.lm_head.weight, teacher.lm_head.weight)  # untied head copied
    assert ds.parse_layers(None, 5) == [0, 2, 4]


def test_progress_and_distillation_loss_falls(distilled):
    out, stdout = distilled["a"]
    assert "step 20/20" in stdout and "tok/s" in stdout and "kl " in stdout
    assert "valid step 10" in stdout and "bits/byte" in stdout
    rec = record(out)
    hist = rec["history"]
    assert len(hist) == 4 and hist[-1]["step"] == 20
    assert hist[-1]["loss"] < hist[0]["loss"] - 0.5, [h["loss"] for h in hist]
    # Half the layers start far from the teacher; the soft targets pull the student back.
    assert hist[-1]["kl"] < 0.5 * hist[0]["kl"], [h["kl"] for h in hist]
    assert hist[-1]["cos"] < hist[0]["cos"], [h["cos"] for h in hist]
    assert hist[-1]["recon"] > 0  # the student's compressor was trained
    assert rec["final_kl_window"] == hist[-1]["kl"] and rec["final_cos_window"] >= 0
    assert rec["final_ce_window"] == hist[-1]["ce"] > 0
    assert "distill_student.py" in rec["command"] and rec["seed"] == 5
    assert len(rec["evals"]) == 1 and rec["valid"]["bits_per_byte"] > 0
    # ... and predicts the validation text better than the undistilled half of the teacher.
    untrained = record(distilled["init"][0])["valid"]
    assert rec["valid"]["bits_per_token"] < untrained["bits_per_token"] - 0.2, (rec["valid"],
                                                                               untrained)


def test_same_seed_gives_bit_identical_checkpoint(distilled):
    (a, _), (b, _) = distilled["a"], distilled["b"]
    assert digest(a / "model.safetensors") == digest(b / "model.safetensors")
    assert digest(a / "config.json") == digest(b / "config.json")
    assert digest(a / "model.safetensors") != digest(distilled["init"][0] / "model.safetensors")


def test_engine_score_agrees_with_distiller_evaluation(distilled, data, mnemo_bin):
    out, _ = distilled["a"]
    valid = record(out)["valid"]
    assert valid["segment_len"] == SEG
    proc = subprocess.run([mnemo_bin, "score", "--model", str(out), "--text-file",
                           os.path.join(data["data"], "valid.txt"), "--segment-len", str(SEG),
                           "--json"], check=True, capture_output=True, text=True)
    summary = json.loads(proc.stdout.strip().splitlines()[-1])["summary"]
    assert summary["tokens"] == valid["tokens"]
    assert summary["bytes"] == valid["bytes"]
    rel = abs(summary["bits_per_token"] - valid["bits_per_token"]) / valid["bits_per_token"]
    assert rel < 1e-3, (summary, valid)


@pytest.mark.parametrize("layers, message", [("0,4", "layer index 4 is out of range"),
                                             ("2,2", "layer 2 is picked twice"),
                                             ("0,x", "expected comma-separated")])
def test_bad_layers_fail_clearly(data, tmp_path, layers, message):
    proc = run("distill_student.py", data["data"], str(data["teacher"]), str(tmp_path / "o"),
               "--layers", layers, check=False)
    assert proc.returncode != 0
    assert "distill_student:" in proc.stderr and message in proc.stderr, proc.stderr
    assert not (tmp_path / "o").exists()


def test_incomplete_or_unsupported_teacher_fails_clearly(data, tmp_path):
    incomplete = tmp_path / "incomplete"
    incomplete.mkdir()
    shutil.copy(data["teacher"] / "config.json", incomplete)
    proc = run("distill_student.py", data["data"], str(incomplete), str(tmp_path / "o"),
               check=False)
    assert proc.returncode != 0
    assert "lacks model.safetensors, tokenizer.model" in proc.stderr, proc.stderr

    # A linear-attention teacher is refused before any weight is read.
    with open(data["teacher"] / "config.json") as f:
        cfg = json.load(f)
    cfg["layers"][1] = {"attention": "linear", "feature_map": "elu"}
    with open(incomplete / "config.json", "w") as f:
        json.dump(cfg, f)
    for name in ("model.safetensors", "tokenizer.model"):
        shutil.copy(data["teacher"] / name, incomplete)
    with pytest.raises(SystemExit, match="teacher layer 1 is 'linear'"):
        ds.read_teacher_config(str(incomplete))
