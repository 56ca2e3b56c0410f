"""The benchmark orchestrators: ``python -m bench.runners.<name> --help`` (bench/README.md)."""
