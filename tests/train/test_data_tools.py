"""The default models' data: the KJV export's fixed split and a reproducible tokenizer.

Needs Debian's bible-kjv-text (tools/setup.sh test installs it); fails, never skips, without.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN = os.path.join(ROOT, "tools", "train")


def run(script, *args):
    return subprocess.run([sys.executable, os.path.join(TRAIN, script), *args],
                          check=True, capture_output=True, text=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    if shutil.which("bible") is None:
        pytest.fail("the 'bible' reader is missing: apt-get install bible-kjv-text")
    out = tmp_path_factory.mktemp("kjv")
    run("export_kjv.py", str(out))
    return str(out)


def test_split_is_by_book_and_held_out_books_never_reach_training(data):
    with open(os.path.join(data, "split.json")) as f:
        manifest = json.load(f)
    splits = manifest["splits"]
    assert [len(splits[s]["books"]) for s in ("train", "valid", "test")] == [53, 7, 6]
    assert splits["valid"]["books"][0] == "Deu" and splits["test"]["books"][0] == "2Sm"
    assert sum(splits[s]["verses"] for s in splits) == 31102
    books = [set(splits[s]["books"]) for s in splits]
    assert not (books[0] & books[1] or books[0] & books[2] or books[1] & books[2])
    with open(os.path.join(data, "train.txt"), encoding="utf-8") as f:
        train = f.read()
    with open(os.path.join(data, "test.txt"), encoding="utf-8") as f:
        test = f.read().splitlines()
    assert train.startswith("In the beginning God created the heaven and the earth.\n")
    # Proverbs 1:7 (a test book) is not in the training text.
    assert "The fear of the LORD is the beginning of knowledge" in "\n".join(test)
    assert "The fear of the LORD is the beginning of knowledge" not in train
    for s in splits:
        size = os.path.getsize(os.path.join(data, f"{s}.txt"))
        assert size == splits[s]["bytes"]


def test_tokenizer_is_reproducible_and_round_trips(data, tmp_path):
    digests = []
    for name in ("a", "b"):
        model = run("train_tokenizer.py", data, str(tmp_path / name),
                    "--vocab-size", "500").stdout.strip()
        with open(model, "rb") as f:
            digests.append(hashlib.sha256(f.read()).hexdigest())
    assert digests[0] == digests[1]
    text = "And God said, Let there be light: and there was light. Ünïcødé ✓"
    ids = subprocess.run(["spm_encode", f"--model={tmp_path / 'a' / 'tokenizer.model'}",
                          "--output_format=id"], input=text, capture_output=True,
                         text=True, check=True).stdout
    back = subprocess.run(["spm_decode", f"--model={tmp_path / 'a' / 'tokenizer.model'}",
                           "--input_format=id"], input=ids, capture_output=True, text=True,
                          check=True).stdout.strip()
    assert back == text  # byte fallback: any UTF-8 survives
