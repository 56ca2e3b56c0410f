"""mnemo_reference: the independent PyTorch reference ("oracle") of mnemo's models.

Written from the papers and MODEL-SPEC.md, sharing no code with the C++ engine; the parity
tests compare the engine with it, training (tools/train/) trains it and the benchmarks run it
as a peer. The model and its definitions are in :mod:`mnemo_reference.model`; its public names
are re-exported here::

    from mnemo_reference import load_checkpoint, random_checkpoint, stream_logits

    model = random_checkpoint(config, "ckpt_dir", seed=1)
    logits = stream_logits(load_checkpoint("ckpt_dir").double(), ids, segment_len=16)

Command line: ``python -m mnemo_reference {make-checkpoint,logits} ...``.
"""

from .model import *  # noqa: F401,F403  (the names listed in model.__all__)
from .model import __all__  # noqa: F401
