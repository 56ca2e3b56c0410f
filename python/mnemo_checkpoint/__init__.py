"""Reading and writing mnemo checkpoint directories (docs/checkpoint-format.md), once.

A checkpoint directory holds ``config.json`` (written with two-space indentation and a final
newline), ``model.safetensors`` and usually ``tokenizer.model``. Every Python tool that makes,
converts, prunes, derives or inspects one goes through these functions: the reference
(``mnemo_reference``), the converters and pruning tools (``tools/``), training
(``tools/train/``), the benchmarks (``bench/``) and the tests.

Importing this module needs only the standard library and numpy; the functions that take or
return torch tensors import torch and safetensors when called (``save_numpy_safetensors`` and
``safetensors_header`` need neither, so ``tools/make_tiny_model.py`` runs without PyTorch).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from typing import Dict, Iterable, Mapping, Optional, Tuple

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.model"
#: The files that make a complete checkpoint the engine and the CLI load.
CHECKPOINT_FILES = (CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE)


def read_json(path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_json(path, value) -> None:
    """``value`` as JSON with two-space indentation and a final newline."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2)
        f.write("\n")


def read_config(directory) -> dict:
    """The directory's ``config.json`` as a dict (not validated)."""
    return read_json(os.path.join(directory, CONFIG_FILE))


def write_config(directory, config: Mapping) -> None:
    """Writes ``config.json`` into ``directory`` (created when missing)."""
    os.makedirs(directory, exist_ok=True)
    write_json(os.path.join(directory, CONFIG_FILE), dict(config))


def is_checkpoint(directory) -> bool:
    """Whether ``directory`` has a ``config.json`` and a ``model.safetensors``."""
    return all(os.path.isfile(os.path.join(directory, name))
               for name in (CONFIG_FILE, WEIGHTS_FILE))


def load_tensors(directory) -> Dict[str, "torch.Tensor"]:
    """The tensors of ``directory``'s ``model.safetensors`` (torch, on the CPU)."""
    from safetensors.torch import load_file
    return load_file(os.path.join(directory, WEIGHTS_FILE))


def load_tensors_with_metadata(directory, keep=None):
    """(tensors, metadata) of ``model.safetensors``; ``keep(name)`` filters the names."""
    from safetensors import safe_open
    with safe_open(os.path.join(directory, WEIGHTS_FILE), framework="pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys() if keep is None or keep(k)}
    return tensors, metadata


def save_tensors(directory, tensors: Mapping, metadata: Optional[dict] = None) -> None:
    """Writes ``model.safetensors`` into ``directory`` (created when missing).

    Values are torch tensors or numpy arrays (stored as torch would store them), made
    contiguous. The file is written under a temporary name and renamed, so a reader never
    sees half a file.
    """
    import torch
    from safetensors.torch import save_file
    os.makedirs(directory, exist_ok=True)
    tensors = {k: (v if isinstance(v, torch.Tensor) else torch.from_numpy(v)).contiguous()
               for k, v in tensors.items()}
    tmp = os.path.join(directory, WEIGHTS_FILE + ".tmp")
    save_file(tensors, tmp, metadata=metadata)
    os.replace(tmp, os.path.join(directory, WEIGHTS_FILE))


def write_checkpoint(directory, config: Mapping, tensors: Mapping,
                     tokenizer: Optional[str] = None,
                     metadata: Optional[dict] = None) -> None:
    """A checkpoint directory: ``model.safetensors``, then ``config.json``, and a copy of
    the ``tokenizer`` file as ``tokenizer.model`` when given."""
    save_tensors(directory, tensors, metadata)
    write_config(directory, config)
    if tokenizer is not None:
        shutil.copyfile(tokenizer, os.path.join(directory, TOKENIZER_FILE))


def save_numpy_safetensors(path, arrays: Mapping) -> None:
    """Writes float32 numpy arrays in the safetensors layout without torch or safetensors
    (for tools that must run on a machine without them)."""
    import numpy as np
    header, offset, blobs = {}, 0, []
    for name, array in arrays.items():
        data = np.ascontiguousarray(array, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # keep the data buffer 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)


def safetensors_header(path) -> Tuple[dict, int]:
    """(header, offset of the data buffer) of a safetensors file, read without loading it.

    The header maps each tensor name to ``{"dtype", "shape", "data_offsets"}`` (plus an
    optional ``__metadata__`` entry); offsets are relative to the data buffer.
    """
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n)), 8 + n


def link_or_copy(src, dst, symbolic: bool = False) -> None:
    """``dst`` as a hard link (or, with ``symbolic``, a symbolic link to the absolute path)
    of ``src``; a copy where links are not possible."""
    try:
        if symbolic:
            os.symlink(os.path.abspath(src), dst)
        else:
            os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def copy_extra_files(src, dst, skip: Iterable[str] = (WEIGHTS_FILE,)) -> None:
    """Copies the plain files of checkpoint ``src`` (config, tokenizer, records) into
    ``dst`` (created), except those named in ``skip``."""
    os.makedirs(dst, exist_ok=True)
    for name in os.listdir(src):
        if name not in skip and os.path.isfile(os.path.join(src, name)):
            shutil.copy(os.path.join(src, name), os.path.join(dst, name))


def derive_checkpoint(src, dst, config: Mapping, symbolic: bool = False,
                      files: Iterable[str] = (WEIGHTS_FILE,)) -> None:
    """A checkpoint ``dst`` (created) with ``config`` and the ``files`` of ``src`` linked
    (see :func:`link_or_copy`): another view of the same weights, e.g. another ``mem_len``."""
    write_config(dst, config)
    for name in files:
        link_or_copy(os.path.join(src, name), os.path.join(dst, name), symbolic)
