"""mnemo's benchmarks as a package: bench.benchlib (shared library), bench.runners.* (the
orchestrators, run as ``python -m bench.runners.run_cpu_bench``) and bench.peers.* (the PyTorch
peers the runners start). The C++ programs are in programs/ (bench/README.md)."""
