"""Helpers of the durability tests (test_server_durability*.py): servers on a session store that
restart, stop and crash (kill -9), the store's files (server/session_store.h), the fault file of
--session-store-faults, one model per layer kind, and exact observations of a session.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Optional

import grpc
from mnemo.v1 import mnemo_pb2 as pb

from server_harness import BASE_FLAGS, ServerProcess, document, odd_chunks

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

# A text scored after each move of a session: its log-probabilities depend on the whole state.
PROBE = " Licensed works, modifications and larger works may be distributed."
# Greedy tokens generated (SCRATCH) after each move.
CONTINUATION_TOKENS = 12


# --- per-kind models -------------------------------------------------------------------------

# `layers` of each long-context kind on the tiny model's shape (docs/layer-kinds.md); "dense" is
# the tiny model itself (Transformer-XL memory), "teacher" the shipped teacher (compressive) with
# its student as speculative draft (models/teacher/draft.json).
KIND_LAYERS = {
    "compressive": [
        {"attention": "dense", "memory": "compressive", "compression": "conv1d",
         "compression_rate": 4, "cmem_len": 8},
        {"attention": "dense", "memory": "compressive", "compression": "most_used",
         "compression_rate": 2, "cmem_len": 8},
    ],
    "linear": [
        {"attention": "linear", "feature_map": "elu"},
        {"attention": "linear", "feature_map": "favor", "num_features": 16},
    ],
    "sparse": [
        {"attention": "sparse", "window": 24, "global_positions": [0]},
        {"attention": "sparse", "pattern": "strided", "stride": 4, "span": 32},
    ],
    "lsh": [
        {"attention": "lsh", "n_hashes": 2, "n_buckets": 8, "chunk_len": 8, "history": 40},
        {"attention": "lsh", "n_hashes": 1, "n_buckets": 4, "chunk_len": 8, "history": 24},
    ],
    "memory_compressed": [
        {"attention": "memory_compressed", "compression_rate": 3, "cmem_len": 8},
        {"attention": "memory_compressed", "compression_rate": 4, "cmem_len": 6},
    ],
    "routing": [
        {"attention": "routing", "n_clusters": 4, "history": 40},
        {"attention": "routing", "n_clusters": 2, "history": 24},
    ],
    "mixed": [
        {"attention": "sparse", "pattern": "window", "window": 24, "global_positions": [0]},
        {"attention": "lsh", "n_hashes": 2, "n_buckets": 8, "chunk_len": 8, "history": 40},
        {"attention": "linear", "feature_map": "elu"},
        {"attention": "dense", "memory": "compressive", "compression": "conv1d",
         "compression_rate": 4, "cmem_len": 8},
    ],
}
KINDS = ["dense", *KIND_LAYERS, "teacher"]
TEACHER_DIR = os.path.join(ROOT, "models", "teacher")

_MAKE_CHECKPOINTS = r"""
import json, sys
from mnemo_reference import random_checkpoint
for directory, config, seed in json.loads(sys.argv[1]):
    random_checkpoint(config, directory, seed=seed)
"""


def make_kind_models(tiny_model: str, out_dir: str) -> dict[str, str]:
    """{kind: checkpoint directory}: random checkpoints (the PyTorch reference writes them) with
    the tiny model's tokenizer, one per entry of KIND_LAYERS, plus "dense" (the tiny model) and
    "teacher" (the shipped one)."""
    with open(os.path.join(tiny_model, "config.json")) as f:
        tiny = json.load(f)
    jobs = []
    for i, (kind, layers) in enumerate(KIND_LAYERS.items()):
        config = dict(tiny, n_layer=len(layers), mem_len=16, tie_word_embeddings=False,
                      layers=layers)
        jobs.append((os.path.join(out_dir, kind), config, 11 + i))
    proc = subprocess.run([sys.executable, "-c", _MAKE_CHECKPOINTS, json.dumps(jobs)],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"making the per-kind checkpoints failed:\n{proc.stderr}")
    models = {"dense": tiny_model}
    for directory, _, _ in jobs:
        shutil.copy(os.path.join(tiny_model, "tokenizer.model"), directory)
        models[os.path.basename(directory)] = directory
    models["teacher"] = TEACHER_DIR
    return models


def model_flags(models: dict[str, str]) -> list[str]:
    """--model NAME=DIR specs for ServerProcess(models=…), the first kind the default."""
    return [f"{name}={directory}" for name, directory in models.items()]


# --- servers on a store ----------------------------------------------------------------------

def store_flags(store_dir: str, *extra: str) -> list[str]:
    return [*BASE_FLAGS, "--session-store", store_dir, *extra]


class StoreServer:
    """A mnemo-server on a session store that can be stopped, crashed and started again on the
    same store with the same flags (new ports each time). `server` is the live process."""

    def __init__(self, binary: str, workdir: str, store_dir: str, models: list[str],
                 extra: list[str], started: Optional[list] = None):
        self.binary, self.workdir, self.store_dir = binary, workdir, store_dir
        self.models, self.extra = models, list(extra)
        self.started = started if started is not None else []
        self.server: Optional[ServerProcess] = None
        self.start()

    def start(self) -> ServerProcess:
        self.server = ServerProcess(self.binary, "", self.workdir,
                                    store_flags(self.store_dir, *self.extra), models=self.models)
        self.started.append(self.server)
        self.server.wait_serving()
        return self.server

    def client(self, timeout: float = 120.0):
        return self.server.client(timeout)

    def crash(self) -> None:
        """kill -9."""
        self.server.kill()

    def crash_and_restart(self) -> ServerProcess:
        self.crash()
        return self.start()

    def stop_and_restart(self) -> ServerProcess:
        """SIGTERM (must exit 0), then a new process on the same store."""
        self.server.stop(check=True)
        return self.start()

    def metrics(self):
        return self.server.metrics()


def stop_all(servers: list) -> None:
    for server in servers:
        if server.returncode is None:
            server.stop(check=True)


class StoreDir:
    """The files of a FileSessionStore (server/session_store.h)."""

    def __init__(self, path: str):
        self.path = path

    def session_dir(self, session_id: str) -> str:
        return os.path.join(self.path, "sessions", session_id)

    def session_ids(self) -> list[str]:
        root = os.path.join(self.path, "sessions")
        return sorted(os.listdir(root)) if os.path.isdir(root) else []

    def versions(self, session_id: str) -> list[int]:
        """Published versions of a session (its <20 digits>.snap files), ascending."""
        try:  # (the server may remove the directory meanwhile)
            names = os.listdir(self.session_dir(session_id))
        except FileNotFoundError:
            return []
        return sorted(int(n[:-5]) for n in names
                      if n.endswith(".snap") and n[:-5].isdigit() and len(n) == 25)

    def newest(self, session_id: str) -> str:
        versions = self.versions(session_id)
        assert versions, f"the store holds no version of {session_id}: {self.listing()}"
        return os.path.join(self.session_dir(session_id), f"{versions[-1]:020d}.snap")

    def temporaries(self) -> list[str]:
        out = []
        for sid in self.session_ids():
            try:
                names = os.listdir(self.session_dir(sid))
            except FileNotFoundError:
                continue
            out += [os.path.join(sid, n) for n in names if n.startswith(".tmp")]
        return out

    def quarantined(self) -> list[str]:
        d = os.path.join(self.path, "quarantine")
        return sorted(os.listdir(d)) if os.path.isdir(d) else []

    def listing(self) -> str:
        """Every file with its size, as far as the server's writer has not removed it meanwhile."""
        lines = []
        for base, _, files in os.walk(self.path):
            for name in files:
                full = os.path.join(base, name)
                try:
                    size = str(os.path.getsize(full))
                except FileNotFoundError:  # removed between the walk and the stat
                    size = "(removed)"
                lines.append(f"{os.path.relpath(full, self.path)} {size}")
        return "\n".join(sorted(lines)) or "(empty)"


class FaultFile:
    """The spec file of --session-store-faults @FILE; the server re-reads it when it changes.
    Replaced atomically (write + rename) so the server never reads half a spec."""

    def __init__(self, path: str):
        self.path = path
        self.set("")

    def flag(self) -> list[str]:
        return ["--session-store-faults", "@" + self.path]

    def set(self, spec: str) -> None:
        tmp = self.path + ".new"
        with open(tmp, "w") as f:
            f.write(spec + ("\n" if spec else ""))
        os.replace(tmp, self.path)
        # A later mtime than the previous spec's, whatever the file system's time granularity.
        now = time.time()
        os.utime(self.path, (now, now))

    def clear(self) -> None:
        self.set("")


# --- exact observations ----------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Observation:
    """What a session computes from its state: the probe's per-token log-probabilities and a
    greedy SCRATCH continuation with its log-probabilities. Compared bitwise."""

    score_ids: tuple
    score_logprobs: tuple
    continuation_ids: tuple
    continuation_logprobs: tuple


def observe(client, session_id: str, probe: str = PROBE,
            max_tokens: int = CONTINUATION_TOKENS) -> Observation:
    scored = client.score(session_id, text=probe)
    result = client.generate_result(session_id, None, max_tokens=max_tokens, temperature=0,
                                    ignore_eos=True, commit="scratch", logprobs=True)
    return Observation(tuple(t.id for t in scored.tokens), tuple(t.logprob for t in scored.tokens),
                       tuple(result.ids), tuple(lp.logprob for lp in result.logprobs))


def assert_same(got: Observation, want: Observation, what: str) -> None:
    assert got.score_ids == want.score_ids, f"{what}: probe tokens differ"
    assert got.score_logprobs == want.score_logprobs, (
        f"{what}: probe logprobs differ (bitwise); max |diff| "
        f"{max(abs(a - b) for a, b in zip(got.score_logprobs, want.score_logprobs)):.3g}")
    assert got.continuation_ids == want.continuation_ids, f"{what}: greedy continuation differs"
    assert got.continuation_logprobs == want.continuation_logprobs, (
        f"{what}: continuation logprobs differ (bitwise)")


# --- documents and sessions ------------------------------------------------------------------

def doc_chunks(seed: int = 5, chars: int = 1500) -> list[str]:
    return odd_chunks(document("Apache-2.0", unicode_tail=True)[-chars:], seed=seed)


def described(client, session_id: str):
    return client.get_session(session_id)


def sessions_by_id(client) -> dict:
    return {s.id: s for s in client.list_sessions()}


def wait_durable(client, session_id: str, version: Optional[int] = None,
                 timeout: float = 30.0) -> int:
    """Waits until the store holds `version` (default: the session's current version) of an
    ASYNC session; returns durable_version."""
    end = time.monotonic() + timeout
    while True:
        s = client.get_session(session_id)
        want = s.state_version if version is None else version
        if s.durable_version >= want:
            return s.durable_version
        if time.monotonic() > end:
            raise AssertionError(f"{session_id}: durable_version {s.durable_version} < {want} "
                                 f"after {timeout} s")
        time.sleep(0.02)


def rpc_code(fn) -> grpc.StatusCode:
    try:
        fn()
    except grpc.RpcError as e:
        return e.code()
    return grpc.StatusCode.OK


def tier_name(tier: int) -> str:
    return pb.StateTier.Name(tier)


# --- the snapshot format (docs/session-snapshots.md) -------------------------------------------

HEADER_BYTES = 32  # magic[8] | format version u32 | flags u32 | manifest bytes u64 | xxh3 u64
VERSION_OFFSET = 8
ALIGNMENT = 64


@dataclasses.dataclass
class SnapshotLayout:
    format_version: int
    manifest: dict
    manifest_end: int  # header + manifest
    data_offset: int  # the first section (aligned)
    sections: list  # (start, bytes) from the start of the snapshot
    total_bytes: int

    def boundaries(self) -> list[int]:
        """Every offset where a part of the snapshot starts or ends, below its size: the
        header's fields, the manifest's end, each section's start and end."""
        cuts = {0, 8, VERSION_OFFSET + 4, 16, 24, HEADER_BYTES, self.manifest_end,
                self.data_offset}
        for start, size in self.sections:
            cuts.update((start, start + size))
        return sorted(c for c in cuts if c < self.total_bytes)


def snapshot_layout(data: bytes) -> SnapshotLayout:
    assert data[:8] == b"MNEMOSS\0", data[:8]
    version = int.from_bytes(data[VERSION_OFFSET:VERSION_OFFSET + 4], "little")
    manifest_bytes = int.from_bytes(data[16:24], "little")
    manifest_end = HEADER_BYTES + manifest_bytes
    manifest = json.loads(data[HEADER_BYTES:manifest_end])
    data_offset = (manifest_end + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT
    sections = [(data_offset + s["offset"], s["bytes"]) for s in manifest["sections"]]
    total = max([data_offset] + [start + size for start, size in sections])
    assert total == len(data), f"the layout ends at {total}, the snapshot has {len(data)} bytes"
    return SnapshotLayout(version, manifest, manifest_end, data_offset, sections, total)


def with_format_version(data: bytes, version: int) -> bytes:
    return (data[:VERSION_OFFSET] + version.to_bytes(4, "little") +
            data[VERSION_OFFSET + 4:])


def flip(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x5A]) + data[offset + 1:]


def xxh3_64(data: bytes) -> int:
    """XXH3-64 (seed 0) of `data`, from the system's libxxhash (the server's checksum)."""
    import ctypes
    lib = ctypes.CDLL("libxxhash.so.0")
    lib.XXH3_64bits.restype = ctypes.c_uint64
    lib.XXH3_64bits.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    return lib.XXH3_64bits(data, len(data))


def retarget(data: bytes, session_id: str, state_version: int) -> bytes:
    """`data` naming session `session_id` at `state_version` instead of its own (a snapshot that
    is otherwise intact, e.g. another model's put in a session's place): the manifest's id and
    version rewritten in place and its checksum recomputed."""
    layout = snapshot_layout(data)
    session = layout.manifest["session"]
    old_id, old_version = session["id"], session["state_version"]
    assert len(old_id) == len(session_id) and len(str(old_version)) == len(str(state_version))
    manifest = data[HEADER_BYTES:layout.manifest_end]
    assert manifest.count(old_id.encode()) == 1, "the session id must occur once"
    manifest = manifest.replace(old_id.encode(), session_id.encode())
    old_field = f'"state_version":{old_version}'.encode()
    if old_field not in manifest:
        old_field = f'"state_version": {old_version}'.encode()
    assert manifest.count(old_field) == 1, manifest
    manifest = manifest.replace(old_field, old_field.replace(str(old_version).encode(),
                                                             str(state_version).encode()))
    return (data[:24] + xxh3_64(manifest).to_bytes(8, "little") + manifest +
            data[layout.manifest_end:])
