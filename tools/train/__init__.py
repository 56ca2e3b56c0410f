"""The default models' training tools (README.md), importable as ``tools.train.*``."""
