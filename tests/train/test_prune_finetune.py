"""Pruning with a fine-tune (tools/train/prune_finetune.py) on a tiny teacher.

A 20-step tiny compressive teacher is pruned while fine-tuned for 20 steps, by magnitude and by
movement, to 50% and 80% unstructured sparsity and to 2:4: every pruned matrix holds exactly
the target (the 2:4 pattern in every group of four inputs), the dense tensors are not pruned,
the two methods choose different masks, movement with a score learning rate of 0 is magnitude
pruning, the same seed gives bit-identical files, the straight-through estimator's gradients
are the hand-computed ones, and `mnemo score` agrees with the tool's final validation, with
sparse and dense weight kernels alike. Needs Debian's bible-kjv-text and sentencepiece
(tools/setup.sh test installs them); fails, never skips, without. MNEMO_BIN (set by ctest) is
the engine binary.
"""

import copy
import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import mnemo_checkpoint

from tools.train import prune_finetune as pf
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
PRUNE = ["--steps", "20", "--warmup", "3", "--lr", "1e-3", "--segment-len", str(SEG),
         "--batch-size", "4", "--threads", "1", "--seed", "3", "--log-every", "5"]
RUNS = {
    "mag50": ["--method", "magnitude", "--sparsity", "0.5"],
    "mov50": ["--method", "movement", "--sparsity", "0.5"],
    "mov50_lr0": ["--method", "movement", "--sparsity", "0.5", "--score-lr", "0"],
    "mov80": ["--method", "movement", "--sparsity", "0.8"],
    "mov80_again": ["--method", "movement", "--sparsity", "0.8"],
    "mag24": ["--method", "magnitude", "--two-four"],
    "mov24": ["--method", "movement", "--two-four"],
}
UNSTRUCTURED = {"mag50": 0.5, "mov50": 0.5, "mov80": 0.8}


def run(script, *args, ok=True):
    proc = subprocess.run([sys.executable, os.path.join(TRAIN, script), *args],
                          capture_output=True, text=True)
    if ok and proc.returncode != 0:
        pytest.fail(f"{script} {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}",
                    pytrace=False)
    return proc


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    for tool in ("bible", "spm_train", "spm_encode"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool!r} is missing: apt-get install bible-kjv-text sentencepiece",
                        pytrace=False)
    base = tmp_path_factory.mktemp("prune")
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
    src = base / "teacher"
    run("train_teacher.py", str(small), str(src), "--tokenizer", tok, *TEACHER)
    return {"base": base, "data": str(small), "src": src}


@pytest.fixture(scope="module")
def runs(teacher):
    out = {}
    for name, args in RUNS.items():
        path = teacher["base"] / name
        proc = run("prune_finetune.py", teacher["data"], str(teacher["src"]), str(path),
                   *args, *PRUNE)
        with open(path / "training.json") as f:
            out[name] = {"dir": path, "stdout": proc.stdout, "record": json.load(f),
                         "tensors": mnemo_checkpoint.load_tensors(path)}
    return out


def pruned_names(tensors):
    return sorted(n for n, t in tensors.items()
                  if t.dim() == 2 and n.endswith(pf.PRUNED_SUFFIXES))


def test_progress_and_record(runs, teacher):
    r = runs["mov80"]
    rec = r["record"]
    assert "step 20/20" in r["stdout"] and "tok/s" in r["stdout"]
    assert f"sparsity {rec['history'][-1]['sparsity']:.4f}" in r["stdout"]
    assert "final valid" in r["stdout"]
    assert rec["method"] == "movement" and rec["target"] == 0.8 and rec["steps"] == 20
    assert "prune_finetune.py" in rec["command"] and rec["wall_seconds"] > 0
    assert rec["schedule"]["prune_start_step"] == 2 and rec["schedule"]["prune_end_step"] == 14
    with open(teacher["src"] / "training.json") as f:
        src_valid = json.load(f)["valid"]
    assert rec["source"]["dir"] == str(teacher["src"]) and rec["source"]["valid"] == src_valid
    names = pruned_names(r["tensors"])
    # tied embeddings: the attention and FFN matrices of both layers, no output head
    assert sorted(rec["matrices"]) == names and len(names) == 8
    hist = rec["history"]
    assert [h["step"] for h in hist] == [5, 10, 15, 20]
    assert all(a["sparsity"] <= b["sparsity"] for a, b in zip(hist, hist[1:]))
    assert hist[-1]["sparsity"] == pytest.approx(0.8, abs=1e-3)
    assert runs["mag24"]["record"]["target"] == "2:4"
    for name in ("config.json", "model.safetensors", "tokenizer.model"):
        assert (r["dir"] / name).is_file()
    with open(r["dir"] / "config.json") as f, open(teacher["src"] / "config.json") as g:
        assert json.load(f) == json.load(g)


@pytest.mark.parametrize("name", sorted(UNSTRUCTURED))
def test_every_matrix_has_exactly_the_target_sparsity(runs, name):
    r, target = runs[name], UNSTRUCTURED[name]
    assert r["tensors"]["layers.0.attn.qkv.weight"].dtype == torch.bfloat16
    for n in pruned_names(r["tensors"]):
        t = r["tensors"][n]
        zeros = int((t == 0).sum())
        assert zeros == round(target * t.numel()), (n, zeros, t.numel())
        assert r["record"]["matrices"][n]["zeros"] == zeros


@pytest.mark.parametrize("name", ["mag24", "mov24"])
def test_two_four_pattern_in_every_group(runs, name):
    r = runs[name]
    for n in pruned_names(r["tensors"]):
        t = r["tensors"][n]
        zeros_per_group = (t == 0).reshape(t.shape[0], -1, 4).sum(dim=-1)
        assert bool((zeros_per_group == 2).all()), n
        assert r["record"]["matrices"][n]["sparsity"] == 0.5


def test_dense_tensors_are_not_pruned(runs, teacher):
    src = mnemo_checkpoint.load_tensors(teacher["src"])
    for name in ("mov80", "mag24"):
        tensors = runs[name]["tensors"]
        dense = [n for n in tensors if n == "word_emb.weight" or n.endswith("attn.r.weight")]
        assert len(dense) == 3
        for n in dense:
            assert int((tensors[n] == 0).sum()) == 0, n       # no forced zeros
            assert not torch.equal(tensors[n], src[n]), n     # but fine-tuned


def zero_pattern(tensors):
    return {n: tensors[n] == 0 for n in pruned_names(tensors)}


def test_magnitude_and_movement_choose_different_masks(runs):
    for a, b in (("mag50", "mov50"), ("mag24", "mov24")):
        pa, pb = zero_pattern(runs[a]["tensors"]), zero_pattern(runs[b]["tensors"])
        differ = [n for n in pa if not torch.equal(pa[n], pb[n])]
        assert len(differ) == len(pa), (a, b, differ)


def test_movement_with_zero_score_lr_is_magnitude_pruning(runs):
    # Scores stay 0, ties are ranked by |w|: the masks, hence the whole run, are magnitude's.
    with open(runs["mag50"]["dir"] / "model.safetensors", "rb") as f:
        mag = f.read()
    with open(runs["mov50_lr0"]["dir"] / "model.safetensors", "rb") as f:
        assert f.read() == mag


def test_same_seed_gives_bit_identical_checkpoint(runs):
    def digest(path):
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    a, b = runs["mov80"]["dir"], runs["mov80_again"]["dir"]
    assert digest(a / "model.safetensors") == digest(b / "model.safetensors")
    untimed = [{k: v for k, v in runs[name]["record"]["valid"].items() if k != "seconds"}
               for name in ("mov80", "mov80_again")]
    assert untimed[0] == untimed[1]


def score(mnemo_bin, model_dir, text, sparse):
    proc = subprocess.run([mnemo_bin, "score", "--model", str(model_dir), "--text-file", text,
                           "--segment-len", str(SEG), "--sparse-weights", sparse, "--json"],
                          check=True, capture_output=True, text=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])["summary"]


@pytest.mark.parametrize("name", ["mag50", "mov80", "mov24"])
def test_engine_score_agrees_with_final_validation(runs, teacher, mnemo_bin, name):
    valid = runs[name]["record"]["valid"]
    assert valid["segment_len"] == SEG
    text = os.path.join(teacher["data"], "valid.txt")
    on = score(mnemo_bin, runs[name]["dir"], text, "on")
    off = score(mnemo_bin, runs[name]["dir"], text, "off")
    assert on["tokens"] == valid["tokens"] and on["bytes"] == valid["bytes"]
    rel = abs(on["bits_per_token"] - valid["bits_per_token"]) / valid["bits_per_token"]
    assert rel < 1e-3, (on, valid)
    assert abs(on["bits_per_token"] - off["bits_per_token"]) <= 1e-5 * off["bits_per_token"]


def test_sparsity_schedule_is_cubic():
    # 20 steps: t0 = 2, t1 = 14
    assert pf.sparsity_at(0, 0.8, 2, 14) == 0.0
    assert pf.sparsity_at(2, 0.8, 2, 14) == 0.0
    assert pf.sparsity_at(8, 0.8, 2, 14) == pytest.approx(0.8 * (1 - 0.5 ** 3))
    assert pf.sparsity_at(14, 0.8, 2, 14) == 0.8 and pf.sparsity_at(19, 0.8, 2, 14) == 0.8


def test_masks_are_exact_and_ties_are_ranked():
    w = torch.tensor([[1.0, -1.0, 1.0, 2.0], [0.5, -3.0, 0.25, 1.0]])
    # magnitude: |w| ties broken by position, the choice of prune_checkpoint
    mag = pf.keep_mask(pf.magnitude_importance(w), 0.5, False)
    assert torch.equal(mag, pf.prune_unstructured(w, 0.5) != 0)
    assert torch.equal(mag, torch.tensor([[False, False, True, True],
                                          [False, True, False, True]]))
    # scores all equal: ranked by |w| (then position), i.e. the magnitude mask
    zero = torch.zeros_like(w)
    assert torch.equal(pf.keep_mask(pf.ranks_of(zero, w.abs()), 0.5, False), mag)
    # scores decide over |w|; equal scores fall back to |w|
    s = torch.tensor([[3.0, 2.0, 0.0, 0.0], [1.0, 1.0, -1.0, 5.0]])
    assert torch.equal(pf.keep_mask(pf.ranks_of(s, w.abs()), 0.5, False),
                       torch.tensor([[True, True, False, False], [False, True, False, True]]))
    assert torch.equal(pf.keep_mask(pf.ranks_of(s, w.abs()), 0.0, True),
                       torch.tensor([[True, True, False, False], [False, True, False, True]]))
    # an exactly zero weight (a pruned source) still leaves an exact count
    wz = torch.tensor([[0.0, 0.0, 0.0, 2.0, 1.0, -3.0]])
    assert int((~pf.keep_mask(pf.magnitude_importance(wz), 1 / 3, False)).sum()) == 2


def test_straight_through_estimator_gradients():
    w = torch.tensor([[1.0, -2.0, 3.0, -4.0]], requires_grad=True)
    s = torch.tensor([[0.5, -1.0, 2.0, 0.0]], requires_grad=True)
    mask = pf.keep_mask(pf.ranks_of(s, w.abs()), 0.5, False)
    assert torch.equal(mask, torch.tensor([[True, False, True, False]]))
    masked = pf.MaskedWeight.apply(w, s, mask.float())
    assert torch.equal(masked, torch.tensor([[1.0, 0.0, 3.0, 0.0]]))
    g_out = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    # L = <G, W'> + |W'|^2 / 2: dL/dW' = G + W' = [2, 2, 6, 4]
    loss = (masked * g_out).sum() + 0.5 * (masked ** 2).sum()
    loss.backward()
    assert torch.equal(w.grad, torch.tensor([[2.0, 0.0, 6.0, 0.0]]))     # dL/dW' * mask
    assert torch.equal(s.grad, torch.tensor([[2.0, -4.0, 18.0, -16.0]]))  # dL/dW' * W


def test_masked_forward_equals_the_pruned_model():
    args = tt.parse_args(["d", "o", "--tokenizer", "t", *TEACHER])
    model = tt.ref.TransfoXLReference(tt.make_config(args, 50))
    tt.init_weights(model, 3, std=0.2)
    model = model.double()
    pruned = pf.PrunedMatrices(model, "movement", two_four=False)
    torch.manual_seed(0)
    for s in pruned.scores.values():
        s.data.copy_(torch.randn(s.shape, dtype=s.dtype))
    pruned.update(0.6, pruning=True)
    want_model = copy.deepcopy(model)
    with torch.no_grad():
        for n, p in want_model.named_parameters():
            if n in pruned.masks:
                p.mul_(pruned.masks[n].to(p.dtype))
    ids = torch.randint(0, 50, (2, 3 * SEG))
    mems_a, mems_b = model.init_mems(2), want_model.init_mems(2)
    step = pf._TrainStep(model)
    for k in range(3):
        seg = ids[:, k * SEG:(k + 1) * SEG]
        got, mems_a, _ = pf.functional_call(
            step, {f"model.{n}": w for n, w in pruned.masked().items()}, (seg, mems_a))
        want, mems_b, _ = tt.train_forward(want_model, seg, mems_b)
        assert torch.allclose(got, want, rtol=1e-12, atol=1e-12)
    # the model's own parameters stay dense
    assert all(int((p == 0).sum()) == 0 for p in pruned.weights.values())


@pytest.mark.parametrize("args, message", [
    (["--method", "magnitude", "--sparsity", "1.0"], "--sparsity must be in [0, 1)"),
    (["--method", "magnitude", "--sparsity", "-0.1"], "--sparsity must be in [0, 1)"),
    (["--method", "magnitude", "--sparsity", "0.5", "--two-four"], "not allowed with"),
    (["--method", "magnitude"], "one of the arguments --sparsity --two-four is required"),
    (["--method", "magnitude", "--sparsity", "0.5", "--score-lr", "0.1"],
     "--score-lr applies to --method movement only"),
    (["--method", "pruned", "--sparsity", "0.5"], "invalid choice"),
])
def test_bad_arguments_are_rejected(teacher, tmp_path, args, message):
    proc = run("prune_finetune.py", teacher["data"], str(teacher["src"]),
               str(tmp_path / "out"), *args, ok=False)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()


def test_missing_files_are_rejected(teacher, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        pf.parse_args([teacher["data"], str(tmp_path), str(tmp_path / "out"),
                       "--method", "movement", "--sparsity", "0.5"])
    assert exc.value.code != 0
    assert f"{tmp_path / 'config.json'} is missing" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        pf.parse_args([str(tmp_path), str(teacher["src"]), str(tmp_path / "out"),
                       "--method", "movement", "--two-four"])
    assert "train.txt is missing" in capsys.readouterr().err
