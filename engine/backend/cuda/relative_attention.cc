// The CUDA backend's relative (dense) attention (kernels/cuda/relative_attention.h): every
// sequence of a layer in one FlashAttention-style launch planned on the host (attention_plan.h),
// against [compressed memory | XL memory | segment], with the attention-mass pass for most_used
// compression. The sparse band (sparse_attention.cc) reuses LaunchRelativeKernel.
#include "kernels/cuda/relative_attention.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"

#include "base/status_macros.h"
#include "engine/backend/cuda/cuda_backend.h"
#include "kernels/cuda/attention_plan.h"

namespace mnemo::engine::cuda {
namespace {

// Bytes rounded up so consecutive parts of one staging upload stay 16-byte aligned.
size_t Align16(size_t bytes) { return (bytes + 15) / 16 * 16; }

}  // namespace

// A sequence of the relative-attention kernel over `m`'s ring and the new rows `qkv`, with
// RealFormer's scores when given.
kc::AttentionSequence CudaBackend::RingSequence(const Tensor& qkv, const XlMemory& m, Tensor& out,
                                                const Tensor* prev_scores, Tensor* scores) {
  kc::AttentionSequence seq{qkv.data<float>(),
                            m.keys().data<float>(),
                            m.values().data<float>(),
                            out.data<float>(),
                            qkv.dim(0),
                            m.size(),
                            std::max<int64_t>(m.capacity(), 1),
                            m.start()};
  if (prev_scores != nullptr) seq.prev_scores = prev_scores->data<float>();
  if (scores != nullptr) seq.scores = scores->data<float>();
  return seq;
}

// Plans the sequences' work items, stages them with the sequences in one upload and launches
// the relative-attention kernel (and the attention-mass pass when a sequence has usage).
absl::Status CudaBackend::LaunchRelativeKernel(const std::vector<kc::AttentionSequence>& seqs,
                                               const RelativeKernelParams& k, int64_t cmem_len_max,
                                               bool with_usage) {
  std::vector<kc::AttentionShapeInput> shapes;
  int64_t max_query_len = 0;
  for (const kc::AttentionSequence& seq : seqs) {
    shapes.push_back({seq.query_len, seq.memory_len});
    max_query_len = std::max(max_query_len, seq.query_len);
  }
  const kc::AttentionPlan plan =
      kc::PlanRelativeAttention(shapes, k.num_heads, k.mem_len_max, k.same_length,
                                2 * ctx_.multiprocessors(), /*min_split_keys=*/128, cmem_len_max);
  // One upload: sequences | work items | combine items.
  const size_t seq_bytes = Align16(seqs.size() * sizeof(kc::AttentionSequence));
  const size_t item_bytes = Align16(plan.items.size() * sizeof(kc::AttentionWorkItem));
  const size_t combine_bytes = plan.combines.size() * sizeof(kc::AttentionCombineItem);
  std::vector<char> host(seq_bytes + item_bytes + combine_bytes);
  std::memcpy(host.data(), seqs.data(), seqs.size() * sizeof(kc::AttentionSequence));
  std::memcpy(host.data() + seq_bytes, plan.items.data(),
              plan.items.size() * sizeof(kc::AttentionWorkItem));
  std::memcpy(host.data() + seq_bytes + item_bytes, plan.combines.data(), combine_bytes);
  ASSIGN_OR_RETURN(Tensor staged, Stage(host.data(), host.size()));
  Tensor partials;
  if (plan.partial_rows > 0) {
    ASSIGN_OR_RETURN(partials,
                     NewTensor(DType::kF32, {plan.partial_rows, k.num_heads, k.head_dim + 2}));
  }
  auto* base = static_cast<char*>(staged.raw());
  const kc::RelativeAttentionLaunch launch{
      reinterpret_cast<const kc::AttentionSequence*>(base),
      reinterpret_cast<const kc::AttentionWorkItem*>(base + seq_bytes),
      reinterpret_cast<const kc::AttentionCombineItem*>(base + seq_bytes + item_bytes),
      static_cast<int>(plan.items.size()),
      static_cast<int>(plan.combines.size()),
      plan.query_tile,
      partials.defined() ? partials.data<float>() : nullptr,
      k.rel,
      k.r_w_bias,
      k.r_r_bias,
      k.num_heads,
      k.head_dim,
      k.mem_len_max,
      k.clamp_len,
      k.same_length};
  Note({11, Addr(base), host.size(), U(launch.num_items), U(launch.num_combines),
        U(launch.query_tile), Addr(launch.partials), Addr(launch.rel), Addr(launch.r_w_bias),
        Addr(launch.r_r_bias), U(launch.num_heads), U(launch.head_dim), U(launch.mem_len_max),
        U(launch.clamp_len), U(launch.same_length)});
  RETURN_IF_ERROR(Launch([this, launch] {
    MNEMO_CUDA_RETURN_IF_ERROR(kc::RelativeAttention(launch, ctx_.stream()));
    return absl::OkStatus();
  }));
  if (!with_usage) return absl::OkStatus();
  const int num_seqs = static_cast<int>(seqs.size());
  Note({23, Addr(base), U(num_seqs), U(max_query_len)});
  return Launch([this, launch, num_seqs, max_query_len] {
    MNEMO_CUDA_RETURN_IF_ERROR(kc::AttentionMass(launch, num_seqs, max_query_len, ctx_.stream()));
    return absl::OkStatus();
  });
}

absl::Status CudaBackend::RelativeAttention(const std::vector<RelativeAttentionArgs>& batch) {
  if (batch.empty()) return absl::OkStatus();
  const RelativeAttentionArgs& first = batch[0];
  if (first.head_dim > kc::kMaxHeadDim) {
    return absl::InvalidArgumentError(absl::StrCat("the CUDA attention kernel supports d_head ≤ ",
                                                   kc::kMaxHeadDim, ", not ", first.head_dim));
  }
  Lock lock(ctx_);
  RETURN_IF_ERROR(lock.status());
  std::vector<kc::AttentionSequence> seqs;
  int64_t cmem_len_max = 0;
  bool with_usage = false;
  for (const RelativeAttentionArgs& a : batch) {
    kc::AttentionSequence seq = RingSequence(*a.qkv, *a.memory, *a.out, a.prev_scores, a.scores);
    if (a.compressed != nullptr && a.compressed->capacity() > 0) {
      const XlMemory& cm = *a.compressed;
      seq.cmem_k = cm.keys().data<float>();
      seq.cmem_v = cm.values().data<float>();
      seq.cmem_len = cm.size();
      seq.cmem_capacity = cm.capacity();
      seq.cmem_start = cm.start();
      seq.memory_len += cm.size();
      cmem_len_max = std::max(cmem_len_max, cm.capacity());
    }
    if (a.usage != nullptr) {
      seq.usage = a.usage->data<float>();
      with_usage = true;
    }
    seqs.push_back(seq);
  }
  const RelativeKernelParams params{first.rel_table->data<float>(),
                                    first.r_w_bias->data<float>(),
                                    first.r_r_bias->data<float>(),
                                    first.num_heads,
                                    first.head_dim,
                                    first.mem_len_max,
                                    first.clamp_len,
                                    first.same_length};
  return LaunchRelativeKernel(seqs, params, cmem_len_max, with_usage);
}

}  // namespace mnemo::engine::cuda
