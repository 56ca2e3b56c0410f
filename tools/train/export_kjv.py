"""Exports the King James Bible (Debian's bible-kjv-text, public domain) as training text.

Reads the whole text through Debian's ``bible`` reader (package bible-kjv), one verse per line,
and writes a fixed split by book, in canonical order (66 books, index i from 0):

* validation: the books with i mod 10 == 4 (Deuteronomy, Ezra, Jeremiah, Nahum, Acts,
  1 Timothy, Jude);
* test: the books with i mod 10 == 9 (2 Samuel, Proverbs, Joel, Malachi, Ephesians, James);
* train: every other book. Held-out books are never trained on.

Each split file holds the verse texts of its books in order, one verse per line, without
references; ``split.json`` lists the books and sizes of each split. The output depends only on
the package's text. Usage::

    python3 tools/train/export_kjv.py OUT_DIR
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys

VERSE = re.compile(r"^([1-3]?[A-Za-z]+)(\d+):(\d+) (.*)$")
SPLITS = ("train", "valid", "test")


def split_of(book_index: int) -> str:
    if book_index % 10 == 4:
        return "valid"
    if book_index % 10 == 9:
        return "test"
    return "train"


def read_verses() -> list[tuple[str, str]]:
    """(book abbreviation, verse text) in canonical order."""
    if shutil.which("bible") is None:
        raise SystemExit("export_kjv: the 'bible' reader is missing: apt-get install "
                         "bible-kjv-text (it pulls in bible-kjv)")
    env = dict(os.environ, COLUMNS="100000")  # one line per verse
    out = subprocess.run(["bible", "-f", "Gen1:1-Rev22:21"], env=env, check=True,
                         capture_output=True, text=True).stdout
    verses = []
    for line in out.splitlines():
        m = VERSE.match(line)
        if not m:
            raise SystemExit(f"export_kjv: unexpected line from bible: {line[:80]!r}")
        verses.append((m.group(1), m.group(4).strip()))
    return verses


def export(out_dir: str) -> dict:
    verses = read_verses()
    books: list[str] = []
    for book, _ in verses:
        if not books or books[-1] != book:
            books.append(book)
    if len(books) != 66:
        raise SystemExit(f"export_kjv: expected 66 books, found {len(books)}")
    index = {b: i for i, b in enumerate(books)}
    os.makedirs(out_dir, exist_ok=True)
    lines = {s: [] for s in SPLITS}
    for book, text in verses:
        lines[split_of(index[book])].append(text)
    manifest = {"source": "Debian bible-kjv-text (King James Version, public domain)",
                "rule": "book index i (canonical order, from 0): i % 10 == 4 valid, "
                        "i % 10 == 9 test, otherwise train",
                "splits": {}}
    for s in SPLITS:
        text = "\n".join(lines[s]) + "\n"
        with open(os.path.join(out_dir, f"{s}.txt"), "w", encoding="utf-8") as f:
            f.write(text)
        manifest["splits"][s] = {
            "books": [b for b in books if split_of(index[b]) == s],
            "verses": len(lines[s]), "bytes": len(text.encode("utf-8"))}
    with open(os.path.join(out_dir, "split.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
    return manifest


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir")
    args = ap.parse_args(argv)
    m = export(args.out_dir)
    for s in SPLITS:
        info = m["splits"][s]
        print(f"{s}: {len(info['books'])} books, {info['verses']} verses, {info['bytes']} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
