"""mnemo's tools as a package: the converters and checkpoint tools import as
``tools.convert_hf_transfo_xl`` etc. (the repository root is an import root; python/README.md)."""
