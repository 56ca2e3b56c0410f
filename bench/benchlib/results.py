"""Result files: one naming scheme for every runner,

    bench/results/<suite>-<UTC start time YYYYmmddTHHMMSSZ>-<short commit>.jsonl

(``nogit`` outside git), JSON lines, the first of which is the run_info line
(bench.benchlib.machine.machine_info: it also says whether tracked files had changes)."""

import json
import os

from bench.benchlib import ROOT
from bench.benchlib.machine import git_commit, utc_now

RESULTS_DIR = os.path.join(ROOT, "bench", "results")


def result_name(suite, when, commit):
    """``<suite>-<YYYYmmddTHHMMSSZ>-<commit>.jsonl`` for a UTC datetime `when`."""
    return f"{suite}-{when.strftime('%Y%m%dT%H%M%SZ')}-{commit or 'nogit'}.jsonl"


def result_path(suite, out_dir=None, when=None):
    """The result file of a run of `suite` starting now (or at `when`) in `out_dir` (default
    bench/results/, created)."""
    out_dir = out_dir or RESULTS_DIR
    os.makedirs(out_dir, exist_ok=True)
    return os.path.join(out_dir, result_name(suite, when or utc_now(), git_commit()))


class ResultWriter:
    """Appends JSON lines to a result file as they come (a run cut short keeps what it
    measured) and keeps them in ``lines``; ``echo`` also prints each to stdout."""

    def __init__(self, path, echo=False):
        self.path = path
        self.echo = echo
        self.lines = []
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._out = open(path, "w")

    def record(self, line):
        self.lines.append(line)
        self._out.write(json.dumps(line) + "\n")
        self._out.flush()
        if self.echo:
            print(json.dumps(line), flush=True)
        return line

    def extend(self, lines):
        for line in lines:
            self.record(line)
        return lines

    def close(self):
        self._out.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
