#!/usr/bin/env bash
# Checks the links of every Markdown file in the repository (tracked or not ignored):
#   - a relative link (or image) must name an existing file or folder inside the repository,
#     and a #fragment on a Markdown target must name one of its headings (GitHub's anchors);
#   - no link may point outside the repository (http:, https:, any other scheme, or a path that
#     climbs above the root). Papers are cited by name, not linked.
# Code (fenced blocks, indented blocks, inline spans) is not read. Exits 1 listing every bad link.
#   tools/check_doc_links.sh [FILE.md ...]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -eq 0 ]; then
  if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    mapfile -t files < <(git ls-files --cached --others --exclude-standard -- '*.md' |
                         while read -r f; do [ -f "$f" ] && echo "$f"; done)
  else
    mapfile -t files < <(find . -name '*.md' -not -path './build/*' -not -path './.*' | sed 's#^\./##')
  fi
else
  files=("$@")
fi
exec python3 - "${files[@]}" <<'PY'
import os
import re
import sys

ROOT = os.getcwd()
FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
LINK = re.compile(r"!?\[(?:[^\[\]\\]|\\.|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^\s()]*(?:\([^\s()]*\)[^\s()]*)*)"
                  r"(?:\s+(?:\"[^\"]*\"|'[^']*'|\([^)]*\)))?\s*\)")
REFDEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(\S+)", re.M)
AUTOLINK = re.compile(r"<([A-Za-z][A-Za-z0-9+.-]*:[^\s<>]*)>")
HTML = re.compile(r"<(?:a|img)\b[^>]*?\b(?:href|src)\s*=\s*[\"']([^\"']*)[\"']", re.I)
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def prose(text):
    """The text with code removed: fenced and indented blocks, then inline code spans."""
    out, fence, prev_blank, in_indented = [], None, True, False
    for line in text.split("\n"):
        m = FENCE.match(line)
        if fence:
            if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence):
                fence = None
            out.append("")
            continue
        if m:
            fence = m.group(1)
            out.append("")
            continue
        blank = not line.strip()
        if not blank and (line.startswith("    ") or line.startswith("\t")) and (
                prev_blank or in_indented):
            in_indented = True
            out.append("")
            continue
        in_indented = in_indented and blank
        prev_blank = blank
        out.append(line)
    text = "\n".join(out)
    return re.sub(r"(`+)(?:(?!\1).)+?\1", lambda m: " " * len(m.group(0)), text, flags=re.S)


def anchors(path, cache={}):
    """GitHub's heading anchors of a Markdown file."""
    if path not in cache:
        seen, result = {}, set()
        with open(path, encoding="utf-8") as f:
            raw = f.read()
        in_fence = None
        for line in raw.split("\n"):
            m = FENCE.match(line)
            if in_fence:
                if m and m.group(1)[0] == in_fence[0]:
                    in_fence = None
                continue
            if m:
                in_fence = m.group(1)
                continue
            h = re.match(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$", line)
            if not h:
                continue
            slug = re.sub(r"[^\w\- ]", "", h.group(1).lower()).replace(" ", "-")
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            result.add(slug if n == 0 else f"{slug}-{n}")
        cache[path] = result
    return cache[path]


def check(md):
    errors = []
    with open(md, encoding="utf-8") as f:
        text = prose(f.read())
    targets = [(m.start(), m.group(1)) for m in LINK.finditer(text)]
    targets += [(m.start(1), m.group(1)) for m in REFDEF.finditer(text)]
    targets += [(m.start(1), m.group(1)) for m in HTML.finditer(text)]
    targets += [(m.start(1), m.group(1)) for m in AUTOLINK.finditer(text)]
    for pos, target in sorted(targets):
        line = text.count("\n", 0, pos) + 1
        target = target.strip("<>")
        where = f"{md}:{line}: {target}"
        if not target:
            errors.append(f"{where}(empty link)")
            continue
        if SCHEME.match(target) or target.startswith("//"):
            errors.append(f"{where} points outside the repository")
            continue
        path, _, fragment = target.partition("#")
        if not path:
            resolved = os.path.abspath(md)
        elif path.startswith("/"):
            resolved = os.path.normpath(os.path.join(ROOT, path.lstrip("/")))
        else:
            resolved = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(md)), path))
        if os.path.commonpath([resolved, ROOT]) != ROOT:
            errors.append(f"{where} points outside the repository")
            continue
        if not os.path.exists(resolved):
            errors.append(f"{where} does not exist")
            continue
        if fragment and resolved.endswith(".md") and os.path.isfile(resolved):
            if fragment.lower() not in anchors(resolved):
                errors.append(f"{where} names no heading of {os.path.relpath(resolved, ROOT)}")
    return errors


errors, files = [], sys.argv[1:]
for md in files:
    errors += check(md)
for e in errors:
    print(f"doc links: {e}")
if errors:
    print(f"doc links: {len(errors)} bad link(s) in {len(files)} Markdown files")
    sys.exit(1)
print(f"doc links: ok ({len(files)} Markdown files)")
PY
