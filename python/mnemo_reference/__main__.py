"""``python -m mnemo_reference``: random checkpoints and float64 oracle logits (see model.py)."""

import sys

from mnemo_reference.model import main

sys.exit(main())
