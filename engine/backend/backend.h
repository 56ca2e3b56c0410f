// Backend: the narrow set of device operations the model is built from. The CPU implementation
// is the oracle every other backend is tested against. Tensors passed to a backend live on its
// device; shapes are validated by the caller (the model), not re-checked here.
// Ops return a Status because device backends can fail (launch errors, out of memory); the CPU
// backend never does for valid shapes. Device backends may run ops asynchronously: results are
// visible to the host after CopyToHost or Synchronize.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

#include "engine/memory/compressive_memory.h"
#include "engine/memory/global_store.h"
#include "engine/memory/linear_state.h"
#include "engine/memory/lsh_buckets.h"
#include "engine/memory/xl_memory.h"
#include "engine/model/model_config.h"
#include "engine/tensor/sparse_weight.h"
#include "engine/tensor/tensor.h"

namespace mnemo::engine {

// One sequence's relative attention (MODEL-SPEC §1.1) against its layer memory.
struct RelativeAttentionArgs {
  const Tensor* qkv;        // [T, 3·H·d_h]: q | k | v blocks, head-major inside each block
  const XlMemory* memory;   // the M positions before this segment (projected keys/values)
  const Tensor* rel_table;  // [P, H·d_h]: row p = W_r·sinusoid(p), P ≥ rows needed
  const Tensor* r_w_bias;   // [H, d_h]
  const Tensor* r_r_bias;   // [H, d_h]
  int num_heads;
  int head_dim;
  int64_t mem_len_max;
  int64_t clamp_len;  // 0 = no clamp
  bool same_length;
  Tensor* out;  // [T, H·d_h]
  // Compressive layers: the compressed memory, whose keys come before `memory`'s (one relative
  // position per slot); null otherwise.
  const XlMemory* compressed = nullptr;
  // most_used compression: usage[slot] += the attention mass each memory slot receives.
  Tensor* usage = nullptr;
  // RealFormer, [H, T, K] (K: compressed + memory + T keys): added before the softmax / the sums.
  const Tensor* prev_scores = nullptr;
  Tensor* scores = nullptr;
};

// One sequence's linear attention (MODEL-SPEC §5) of one layer, updating its state in place.
struct LinearAttentionArgs {
  const Tensor* qkv;          // [T, 3·H·d_h]
  const Tensor* input;        // [T, D] the layer input (the gate reads it)
  const LinearConfig* layer;  // feature map, num_features, eps, gated
  const Tensor* features;     // [num_features, d_h] (favor, rfa)
  const Tensor* gate_weight;  // [H, D] (gated)
  const Tensor* gate_bias;    // [H] (gated)
  LinearState* state;
  int num_heads;
  int head_dim;
  Tensor* out;  // [T, H·d_h]
};

// One sequence's sparse attention (MODEL-SPEC §3) of one layer against its rolling K/V buffer;
// the new positions join the buffer afterwards (AppendToMemory), as for dense layers. New global
// positions join the layer's global store here, after every query has attended.
struct SparseAttentionArgs {
  const Tensor* qkv;          // [T, (H + 2·H_kv)·d_h]: q | k | v
  const XlMemory* memory;     // the last `span` positions before this segment ([·, H_kv·d_h])
  const SparseConfig* layer;  // pattern and its parameters
  int num_heads;
  int head_dim;
  Tensor* out;            // [T, H·d_h]
  const int32_t* tokens;  // [T] the segment's token ids (global tokens)
  int64_t position;       // stream position of the segment's first token
  GlobalStore* aux;       // the global store (undefined ring: no globals)
  // RealFormer, [H, T, M + T]: added before the softmax / the sums passed on.
  const Tensor* prev_scores = nullptr;
  Tensor* scores = nullptr;
  // Grouped-query attention: key/value heads (0: num_heads); query head h reads key head
  // h / (num_heads / num_kv_heads). Only sliding windows without globals group heads.
  int num_kv_heads = 0;
  // Gemma-2 (sliding windows only): the scores' scale (0: 1/sqrt(d_h)) and their soft cap
  // (cap·tanh(score / cap) after scaling; 0: none).
  float scale = 0.0f;
  float softcap = 0.0f;

  int kv_heads() const { return num_kv_heads > 0 ? num_kv_heads : num_heads; }
};

// One sequence's LSH attention (docs/checkpoint-format.md "lsh") of one layer. The new positions'
// normalised keys, values and buckets are written into the ring's next slots
// (XlMemory::SlotOfNewRow); the caller then calls memory->Advance(T).
struct LshAttentionArgs {
  const Tensor* qkv;        // [T, 2·H·d_h]: shared query/key | value
  XlMemory* memory;         // normalised keys and values of the last history − 1 positions
  LshBuckets* aux;          // their buckets
  const LshConfig* layer;   // n_hashes, n_buckets, chunk_len, history
  const Tensor* rotations;  // [H, d_h, n_hashes, n_buckets / 2]
  int num_heads;
  int head_dim;
  Tensor* out;  // [T, H·d_h]
};

// One sequence's memory-compressed attention (docs/checkpoint-format.md "memory_compressed") of
// one layer: the blocks its new positions complete are compressed, every new query attends, and
// the new rows are written into the rings' next slots (XlMemory::SlotOfNewRow): the segment's
// keys/values into `block`, the new compressed rows into `compressed`. The caller then advances
// `block` by T and `compressed` by the blocks completed (kernels::BlocksCompleted).
struct MemoryCompressedAttentionArgs {
  const Tensor* qkv;                    // [T, 3·H·d_h]: q | k | v
  XlMemory* block;                      // keys/values of the last min(position, c − 1) positions
  XlMemory* compressed;                 // the last min(⌊position / c⌋, S) compressed blocks
  const MemoryCompressedConfig* layer;  // c, S
  // The convolutions as products over a block's c rows side by side: [H·d_h, c·H·d_h], column
  // t·H·d_h + i = the convolution's weight [·, i, t]; biases [H·d_h].
  const Tensor* compress_k;
  const Tensor* compress_k_bias;
  const Tensor* compress_v;
  const Tensor* compress_v_bias;
  int64_t position;  // stream position of the segment's first token
  int num_heads;
  int head_dim;
  Tensor* out;  // [T, H·d_h]
};

// One sequence's routing attention (docs/checkpoint-format.md "routing") of one layer. The new
// positions' keys, values and key clusters are written into the ring's next slots
// (XlMemory::SlotOfNewRow); the caller then calls memory->Advance(T).
struct RoutingAttentionArgs {
  const Tensor* qkv;             // [T, 3·H·d_h]: q | k | v
  XlMemory* memory;              // keys/values of the last min(position, history − 1) positions
  Tensor* clusters;              // [history − 1, H] int32: their keys' clusters, same slots
  const RoutingConfig* layer;    // n_clusters, history
  const Tensor* unit_centroids;  // [H, n_clusters, d_h], each row of norm 1
  int num_heads;
  int head_dim;
  Tensor* out;  // [T, H·d_h]
};

// One encoder pass's Longformer attention (kernels/cpu/longformer_attention.h) over a whole
// window of N positions: no state.
struct LongformerAttentionArgs {
  const Tensor* qkv;                    // [N, 3·H·d_h]: q | k | v
  const Tensor* global_qkv;             // [N, 3·H·d_h]: the global projections (globals only)
  const std::vector<int64_t>* globals;  // ascending positions < N
  int64_t one_sided;                    // keys on each side of a local query
  int num_heads;
  int head_dim;
  Tensor* out;  // [N, H·d_h]
};

// One encoder pass's BigBird attention (kernels/cpu/bigbird_attention.h) over a window padded to
// L positions (whole blocks when block-sparse): no state.
struct BigBirdAttentionArgs {
  const Tensor* qkv;                   // [L, 3·H·d_h]: q | k | v
  const std::vector<int32_t>* random;  // block-sparse: [H, L / b − 2, r] blocks; full: null
  int64_t valid;                       // positions before it are the window's tokens
  int64_t block_size;
  int64_t num_random;  // r (block-sparse)
  int num_heads;
  int head_dim;
  Tensor* out;  // [L, H·d_h]
};

// One Funnel-Transformer layer's relative attention (kernels/cpu/funnel_attention.h) over one
// window: queries at one pooling level, keys at the same or the previous one. No state.
struct FunnelAttentionArgs {
  const Tensor* q;   // [Tq, ≥ H·d_h]: the queries are its first H·d_h columns
  const Tensor* kv;  // [Tk, ≥ 2·H·d_h]: keys then values are its last 2·H·d_h columns
  const Tensor* r;   // [q_stride·(Tq − 1) + Tk, H·d_h]: R(δ) by relative distance
  const Tensor* r_w_bias;
  const Tensor* r_r_bias;
  const Tensor* r_s_bias;
  const Tensor* seg;  // [H·d_h]: the same-token-type embedding
  int64_t q_stride;   // 1, or 2 where the layer pools its queries
  bool separate_cls;
  int num_heads;
  int head_dim;
  Tensor* out;  // [Tq, H·d_h]
};

// One encoder pass's Nyströmformer attention (kernels/cpu/nystrom_attention.h) over a window
// padded to L positions: no state.
struct NystromAttentionArgs {
  const Tensor* qkv;   // [L, 3·H·d_h]: q | k | v
  const Tensor* conv;  // [H, taps], or null without the values' convolution
  int64_t valid;       // positions before it are the window's tokens, the rest padding
  int64_t landmarks;   // dividing L
  int num_heads;
  int head_dim;
  Tensor* out;  // [L, H·d_h]
};

// One encoder pass's Linformer attention (kernels/cpu/linformer_attention.h) over a window of N
// positions: no state.
struct LinformerAttentionArgs {
  const Tensor* qkv;     // [N, 3·H·d_h]: q | k | v
  const Tensor* proj_k;  // E [k, n_max]
  const Tensor* proj_v;  // F [k, n_max]
  int num_heads;
  int head_dim;
  Tensor* out;  // [N, H·d_h]
};

// One encoder pass's Synthesizer attention (kernels/cpu/synthesizer_attention.h) over a window of
// N positions: no state.
struct SynthesizerAttentionArgs {
  const Tensor* hidden;  // dense: relu(first dense layer) [N, H·d_h]; random: null
  const Tensor* w2;      // dense: [H, n_max, d_h]; random: null
  const Tensor* b2;      // dense: [H, n_max]; random: the matrices [H, n_max, n_max]
  const Tensor* v;       // [N, H·d_h]
  int num_heads;
  int head_dim;
  Tensor* out;  // [N, H·d_h]
};

// One sequence's compressive-memory update of one layer (MODEL-SPEC §2.2), issued after its
// attention and before its AppendToMemory: the XL rows the append will evict go, oldest first,
// into the eviction buffer; full groups are compressed, projected by W_k/W_v and join the
// compressed memory; the segment's hidden rows take the slots the append will write.
struct CompressArgs {
  const Tensor* hidden;      // [T, D] the segment's attention inputs
  const XlMemory* memory;    // the layer's XL memory before the append
  CompressiveMemory* aux;    // hidden rows, buffer, compressed memory, usage
  const DenseConfig* layer;  // compression, rate
  const Tensor* kv_weight;   // [2·H·d_h, D]: W_k then W_v
  const Tensor* compress;    // [D, D, taps] (conv1d, dilated_conv) or undefined
  const Tensor* compress_bias;
};

// One sequence's new positions joining its layer memory: keys/values are the k and v blocks of
// `qkv` ([T, 3·H·d_h]). The backend writes the rows; the caller then calls memory->Advance(T).
struct MemoryAppendArgs {
  const Tensor* qkv;  // [T, q_width + 2·width]: q | k | v, k and v as wide as the ring's rows
  XlMemory* memory;
  int64_t q_width = 0;  // the queries' columns (0: the ring's width)
};

// Device memory as a server budgets it.
struct DeviceMemoryInfo {
  size_t total_bytes = 0;  // the device's memory (host RAM is not reported for the CPU: 0)
  size_t free_bytes = 0;   // free on the device now, plus what this process's pool holds unused
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string_view name() const = 0;
  virtual Device device() const = 0;

  // A zero-filled tensor on this backend's device.
  virtual absl::StatusOr<Tensor> Allocate(DType dtype, std::vector<int64_t> shape) = 0;
  // A tensor whose contents are unspecified (scratch that is written before it is read).
  virtual absl::StatusOr<Tensor> AllocateUninitialized(DType dtype, std::vector<int64_t> shape) = 0;
  // A copy of the host tensor `host` on this device.
  virtual absl::StatusOr<Tensor> CopyFromHost(const Tensor& host) = 0;
  // A host copy of `t` (a tensor of this device); waits for the work that produces it.
  virtual absl::StatusOr<Tensor> CopyToHost(const Tensor& t) = 0;
  // dst = src (same device, same size in bytes).
  virtual absl::Status Copy(const Tensor& src, Tensor& dst) = 0;
  // Every row of dst[R, C] = row[C].
  virtual absl::Status FillRows(const Tensor& row, Tensor& dst) = 0;
  // y[i, :] = x[rows[i], :]; rows are host indices already checked against x.
  virtual absl::Status GatherRows(const Tensor& x, const std::vector<int64_t>& rows, Tensor& y) = 0;
  // y[R, A + B] = [a[R, A] | b[R, B]] row by row (a reformer's axial positions and its head).
  virtual absl::Status ConcatColumns(const Tensor& a, const Tensor& b, Tensor& y) = 0;
  // Waits until every op issued so far has finished; reports a deferred device error.
  virtual absl::Status Synchronize() = 0;
  virtual DeviceMemoryInfo MemoryInfo() const = 0;

  // y[N, out] = x[N, in] · w[out, in]ᵀ (+ bias[out]).
  virtual absl::Status Linear(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y) = 0;
  // y[N, out] = x[N, in] · Wᵀ (+ bias) with W in a sparse form (pruned weights).
  virtual absl::Status SparseLinear(const Tensor& x, const SparseWeight& w, const Tensor* bias,
                                    Tensor& y) {
    return absl::UnimplementedError(absl::StrCat(std::string(name()), " has no sparse products"));
  }
  // y = act(x · wᵀ + bias): the FFN's first product, bias and activation (fused where the
  // backend can).
  virtual absl::Status LinearBiasActivation(const Tensor& x, const Tensor& w, const Tensor& bias,
                                            Activation act, Tensor& y) = 0;
  // Row-wise LayerNorm over the last dimension; y may be x.
  virtual absl::Status LayerNorm(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                                 float eps, Tensor& y) = 0;
  // The residual step of a block: x = x + delta, then normed = LayerNorm(x) (normed may be x, as
  // in a post-LN model). One pass instead of two.
  virtual absl::Status AddLayerNorm(Tensor& x, const Tensor& delta, const Tensor& gamma,
                                    const Tensor& beta, float eps, Tensor& normed) = 0;
  // Row-wise RMSNorm over the last dimension: y = x / sqrt(mean(x²) + eps) · gamma; y may be x.
  virtual absl::Status RmsNorm(const Tensor& x, const Tensor& gamma, float eps, Tensor& y) = 0;
  // Gated MLP: y[N, F] = act(x[:, :F]) · x[:, F:] for x[N, 2F] = [gate | up].
  virtual absl::Status GatedActivation(const Tensor& x, Activation act, Tensor& y) = 0;
  // Rotary positions (kernels/cpu/rotary.h), in place: the `num_heads` head vectors at the start
  // of each row of x[N, ≥ num_heads·head_dim] turn by that row's position (host, N entries) times
  // inv_freq[head_dim / 2].
  virtual absl::Status Rotary(Tensor& x, const std::vector<int64_t>& positions, int num_heads,
                              int head_dim, const Tensor& inv_freq) = 0;
  // y = act(y + bias[last dim]).
  virtual absl::Status BiasActivation(const Tensor& bias, Activation act, Tensor& y) = 0;
  // y = a + b (same shapes; y may alias either).
  virtual absl::Status Add(const Tensor& a, const Tensor& b, Tensor& y) = 0;
  // y[N, D] = scale · table[ids[n], :]; ids are host int32 already checked against the table.
  virtual absl::Status Embedding(const Tensor& table, const std::vector<int32_t>& ids, float scale,
                                 Tensor& y) = 0;
  // Runs every sequence's attention of one layer (a ragged batch).
  virtual absl::Status RelativeAttention(const std::vector<RelativeAttentionArgs>& batch) = 0;
  // Runs every sequence's linear attention of one layer; each state advances by its T tokens.
  virtual absl::Status LinearAttention(const std::vector<LinearAttentionArgs>& batch) = 0;
  // Runs every sequence's sparse attention of one layer.
  virtual absl::Status SparseAttention(const std::vector<SparseAttentionArgs>& batch) = 0;
  // Runs every sequence's LSH attention of one layer and writes its new ring rows.
  virtual absl::Status LshAttention(const std::vector<LshAttentionArgs>& batch) {
    return absl::UnimplementedError(
        absl::StrCat(std::string(name()), " has no LSH attention kernel"));
  }
  // Runs every sequence's memory-compressed attention of one layer and writes its new ring rows.
  virtual absl::Status MemoryCompressedAttention(
      const std::vector<MemoryCompressedAttentionArgs>& batch) {
    return absl::UnimplementedError(
        absl::StrCat(std::string(name()), " has no memory-compressed attention kernel"));
  }
  // Runs every sequence's routing attention of one layer and writes its new ring rows.
  virtual absl::Status RoutingAttention(const std::vector<RoutingAttentionArgs>& batch) {
    return absl::UnimplementedError(
        absl::StrCat(std::string(name()), " has no routing attention kernel"));
  }
  // Runs one encoder layer's Longformer attention.
  virtual absl::Status LongformerAttention(const LongformerAttentionArgs& args) {
    return absl::UnimplementedError(
        absl::StrCat(std::string(name()), " has no Longformer attention kernel"));
  }
  virtual absl::Status FunnelAttention(const FunnelAttentionArgs& args) {
    return absl::UnimplementedError(
        absl::StrCat(std::string(name()), " has no Funnel attention kernel"));
  }
  virtual absl::Status BigBirdAttention(const BigBirdAttentionArgs& args) {
    return absl::UnimplementedError(
        absl::StrCat(std::string(name()), " has no BigBird attention kernel"));
  }
  virtual absl::Status NystromAttention(const NystromAttentionArgs& args) {
    return absl::UnimplementedError(
        absl::StrCat(std::string(name()), " has no Nyströmformer attention kernel"));
  }
  virtual absl::Status LinformerAttention(const LinformerAttentionArgs& args) {
    return absl::UnimplementedError(
        absl::StrCat(std::string(name()), " has no Linformer attention kernel"));
  }
  virtual absl::Status SynthesizerAttention(const SynthesizerAttentionArgs& args) {
    return absl::UnimplementedError(
        absl::StrCat(std::string(name()), " has no Synthesizer attention kernel"));
  }
  // Updates every sequence's compressive memory of one layer.
  virtual absl::Status CompressMemory(const std::vector<CompressArgs>& batch) {
    return absl::UnimplementedError(
        absl::StrCat(std::string(name()), " has no compressive memory kernels"));
  }
  // Writes every sequence's new keys/values into its memory ring (slots from
  // XlMemory::SlotOfNewRow); the memories' bookkeeping is the caller's (XlMemory::Advance).
  virtual absl::Status AppendToMemory(const std::vector<MemoryAppendArgs>& batch) = 0;

  // Repeated steps. The ops issued between BeginStep(key) and EndStep() form one step that the
  // caller promises to repeat exactly for the same key: the same ops on the same shapes, only the
  // contents of host inputs differing (token ids, which session memories, their fill levels).
  // A backend may record such a step and replay the recording (the CUDA backend: a CUDA graph
  // per key, so a decode step costs one launch instead of hundreds). Within a step, host tensors
  // returned by CopyToHost are filled by EndStep, and no op may depend on host-visible results
  // of an earlier op of the step. The default runs the ops as they come.
  virtual absl::Status BeginStep(uint64_t key) { return absl::OkStatus(); }
  // Runs what was recorded (or waits for the ops) and fills the step's host tensors.
  virtual absl::Status EndStep() { return absl::OkStatus(); }
  // Abandons the step after an error (its ops may or may not have run).
  virtual void AbortStep() {}

  // CPU: lets Linear round the activations of decode rows against bf16 weights to bf16 for the
  // CPU's bf16 dot products (CpuWeights::kBf16Products, kernels::HalfProducts::kBf16). Set once,
  // before the model's first step. Other backends keep their own products and ignore it.
  virtual void AllowBf16Products(bool /*allow*/) {}
};

// The CPU backend (OpenBLAS GEMMs, vectorised loops, the process-wide thread pool).
std::unique_ptr<Backend> MakeCpuBackend();

// The CUDA backend on device `ordinal` (cuBLAS GEMMs, own kernels, a stream-ordered memory pool
// shared by every backend on that device). UNAVAILABLE when the build has no CUDA or the machine
// has no such device.
absl::StatusOr<std::unique_ptr<Backend>> MakeCudaBackend(int ordinal = 0);

// "cpu" or "cuda[:N]" → a backend.
absl::StatusOr<std::unique_ptr<Backend>> MakeBackend(std::string_view device);

}  // namespace mnemo::engine
