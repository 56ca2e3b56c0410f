"""What the benchmark runners share: logging, machine information, waiting for a quiet machine,
running measurement subprocesses, a mnemo-server process, and result files.

* :mod:`bench.benchlib.machine`: ``Log``, the BLAS environment, CPU busy fractions, ``QuietWait``,
  ``machine_info`` (the run_info line), the git commit;
* :mod:`bench.benchlib.process`: ``run_json`` / ``run_clean`` (JSON lines of a subprocess with
  its contamination by other processes), ``require_built``, ``python_env``, ``sh``;
* :mod:`bench.benchlib.results`: one naming scheme for result files,
  ``bench/results/<suite>-<UTC YYYYmmddTHHMMSSZ>-<short commit>.jsonl``, and ``ResultWriter``;
* :mod:`bench.benchlib.server`: a ``mnemo-server`` process on loopback ports;
* :mod:`bench.benchlib.checkpoints`: the cached CPU benchmark model (run_cpu_bench's);
* :mod:`bench.benchlib.make_bench_model` (a program): the GPU benchmark model.
"""

import os

#: The repository root.
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
