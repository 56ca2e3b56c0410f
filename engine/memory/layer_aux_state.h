// What some layer kinds keep beside their K/V ring (docs/checkpoint-format.md): a sparse
// layer's kept global positions, an LSH layer's buckets, a compressive layer's hidden rows,
// eviction buffer and compressed memory. Every part has a fixed size chosen from the config, so
// a session's bytes never grow with the document.
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

#include "engine/memory/xl_memory.h"
#include "engine/tensor/tensor.h"

namespace mnemo::engine {

struct LayerAuxState {
  // sparse with globals: keys/values of the last max_global global positions (a ring) and the
  // stream position held by each slot.
  XlMemory globals;
  std::vector<int64_t> global_positions;
  // lsh: each ring slot's buckets, [history − 1, H·n_hashes] int32 (same slots as the K/V ring).
  Tensor buckets;
  // compressive: the XL memory's positions in hidden form (the attention input), [mem_len, D],
  // same slots as the K/V ring; evicted rows waiting for a full group, [c, D]; and the
  // compressed memory's keys/values, a ring of cmem_len.
  Tensor hidden;
  Tensor pending;
  int64_t pending_rows = 0;
  XlMemory compressed;
  // most_used: attention mass each memory slot received, [mem_len], and the pending rows', [c].
  Tensor usage;
  Tensor pending_usage;
  // compressive: compressed rows produced and the evicted rows they took, since the state opened.
  int64_t compressions = 0;
  int64_t tokens_compressed = 0;

  // Exact bytes of tensor storage.
  size_t bytes() const {
    size_t total = globals.bytes() + compressed.bytes();
    for (const Tensor* t : {&buckets, &hidden, &pending, &usage, &pending_usage}) {
      if (t->defined()) total += t->bytes();
    }
    return total;
  }

  // A copy whose tensors are copy(t) (clone, offload, restore); bookkeeping is kept.
  template <typename CopyFn>
  absl::StatusOr<LayerAuxState> Map(CopyFn copy) const {
    LayerAuxState out;
    auto each = [&](const Tensor& src, Tensor& dst) -> absl::Status {
      if (!src.defined()) return absl::OkStatus();
      auto t = copy(src);
      if (!t.ok()) return t.status();
      dst = *std::move(t);
      return absl::OkStatus();
    };
    Tensor gk, gv, ck, cv;
    for (auto [src, dst] : {std::pair{&globals.keys(), &gk},
                            {&globals.values(), &gv},
                            {&compressed.keys(), &ck},
                            {&compressed.values(), &cv},
                            {&buckets, &out.buckets},
                            {&hidden, &out.hidden},
                            {&pending, &out.pending},
                            {&usage, &out.usage},
                            {&pending_usage, &out.pending_usage}}) {
      if (absl::Status s = each(*src, *dst); !s.ok()) return s;
    }
    if (gk.defined()) out.globals = globals.WithStorage(std::move(gk), std::move(gv));
    if (ck.defined()) out.compressed = compressed.WithStorage(std::move(ck), std::move(cv));
    out.global_positions = global_positions;
    out.pending_rows = pending_rows;
    out.compressions = compressions;
    out.tokens_compressed = tokens_compressed;
    return out;
  }
};

}  // namespace mnemo::engine
