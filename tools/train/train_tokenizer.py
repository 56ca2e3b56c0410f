"""Trains the default models' sentencepiece tokenizer on the KJV training split.

Debian's ``spm_train`` (unigram, byte fallback so any UTF-8 text round-trips, ids 0 = <unk>,
1 = <s>, 2 = </s>), deterministic: every training line is used in file order
(no sampling, no shuffling), one thread, a fixed seed. Usage::

    python3 tools/train/train_tokenizer.py DATA_DIR OUT_DIR [--vocab-size 4000]

writes OUT_DIR/tokenizer.model (and tokenizer.vocab).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile


def train(data_dir: str, out_dir: str, vocab_size: int, seed: int = 1) -> str:
    os.makedirs(out_dir, exist_ok=True)
    # The model records its input and output paths: train under fixed relative names so the
    # file depends only on the text and the options.
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(os.path.join(data_dir, "train.txt"), os.path.join(tmp, "train.txt"))
        subprocess.run(
            ["spm_train", "--input=train.txt", "--model_prefix=tokenizer",
             f"--vocab_size={vocab_size}", "--model_type=unigram", "--character_coverage=1.0",
             "--byte_fallback=true", "--input_sentence_size=0", "--shuffle_input_sentence=false",
             "--num_threads=1", f"--random_seed={seed}", "--unk_id=0", "--bos_id=1",
             "--eos_id=2", "--pad_id=-1", "--minloglevel=2"],
            check=True, cwd=tmp)
        for ext in ("model", "vocab"):
            shutil.copy(os.path.join(tmp, f"tokenizer.{ext}"),
                        os.path.join(out_dir, f"tokenizer.{ext}"))
    return os.path.join(out_dir, "tokenizer.model")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data_dir")
    ap.add_argument("out_dir")
    ap.add_argument("--vocab-size", type=int, default=4000)
    args = ap.parse_args(argv)
    print(train(args.data_dir, args.out_dir, args.vocab_size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
