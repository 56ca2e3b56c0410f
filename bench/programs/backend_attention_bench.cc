// backend_attention_bench: one attention kind at one sequence length through an engine backend
// (the CPU backend or the CUDA backend), exactly the call a model layer makes, printed as one JSON
// line. One point per process, so that the memory it reports belongs to that point alone
// (bench/runners/run_gpu_attention_bench.py runs every kind × length and PyTorch's
// scaled_dot_product_attention in the same run).
//
//   backend_attention_bench --device cpu|cuda[:N] --kind K --len L [--heads 16] [--head-dim 64]
//                           [--runs 5] [--warmup 1] [--seed 1]
//
// K (the parameters of bench/programs/attention_bench.cc, as layer configurations):
//   dense    Transformer-XL relative attention, causal, empty memory (Backend::RelativeAttention)
//   window   sliding window W = 512, dilation 1 (Backend::SparseAttention)
//   strided  strided, stride 128, span L, local/strided split by heads
//   fixed    fixed, block 128, summary 16, span L, block/summary split by heads
//   bigbird  BigBird, block 64, window_blocks 3, random_blocks 2, span L
//   linear   linear attention, elu feature map, state starting at zero (Backend::LinearAttention)
//   lsh      Reformer LSH, 4 rounds, 64 buckets, chunk 64, history L (every window is the whole
//            prefix), ring starting empty (Backend::LshAttention)
//
// One timed call is a prefill of L new positions on an empty memory, batch 1, float32 inputs
// (random normal), then Backend::Synchronize. Warm-up W, then N runs; min / median / max in
// milliseconds. Memory: on the CPU, peak_rss_bytes (getrusage); on CUDA, device_peak_bytes, the
// high-water mark of the device memory pool's bytes in use during the timed runs (inputs
// included), read with cudaMemPoolAttrUsedMemHigh. nonzeros: the (query, key) pairs attended,
// summed over heads (kernels::AppendAllowedPositions; L·(L+1)/2·H for dense; null for linear and
// lsh).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <sys/resource.h>

#include "absl/strings/str_cat.h"

#include "engine/backend/backend.h"
#include "engine/backend/sparse_layer.h"
#include "engine/memory/global_store.h"
#include "engine/memory/linear_state.h"
#include "engine/memory/lsh_buckets.h"
#include "engine/memory/xl_memory.h"
#include "engine/model/model_config.h"
#include "kernels/cpu/sparse_pattern.h"

#if defined(MNEMO_WITH_CUDA)
#include <cuda_runtime.h>
#endif

namespace mnemo::bench {
namespace {

using engine::Backend;
using engine::Tensor;

[[noreturn]] void Die(const std::string& message) {
  std::fprintf(stderr, "backend_attention_bench: %s\n", message.c_str());
  std::exit(2);
}

struct Options {
  std::string device = "cpu";
  std::string kind;
  int64_t len = 0;
  int heads = 16;
  int head_dim = 64;
  int runs = 5;
  int warmup = 1;
  uint32_t seed = 1;
};

Options Parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) Die(a + " needs a value");
      return argv[++i];
    };
    if (a == "--device") {
      o.device = value();
    } else if (a == "--kind") {
      o.kind = value();
    } else if (a == "--len") {
      o.len = std::atoll(value().c_str());
    } else if (a == "--heads") {
      o.heads = std::atoi(value().c_str());
    } else if (a == "--head-dim") {
      o.head_dim = std::atoi(value().c_str());
    } else if (a == "--runs") {
      o.runs = std::atoi(value().c_str());
    } else if (a == "--warmup") {
      o.warmup = std::atoi(value().c_str());
    } else if (a == "--seed") {
      o.seed = static_cast<uint32_t>(std::atoll(value().c_str()));
    } else {
      Die("unknown flag " + a +
          " (--device, --kind, --len, --heads, --head-dim, --runs, --warmup, --seed)");
    }
  }
  if (o.kind.empty() || o.len <= 0 || o.heads <= 0 || o.head_dim <= 0 || o.runs <= 0 ||
      o.warmup < 0) {
    Die("usage: backend_attention_bench --device cpu|cuda --kind "
        "dense|window|strided|fixed|bigbird|linear --len L [--heads H] [--head-dim D] [--runs N] "
        "[--warmup W] [--seed S]");
  }
  return o;
}

// The layer as config.json describes it (docs/checkpoint-format.md "layers").
std::string LayerJson(const Options& o) {
  const std::string span = std::to_string(o.len);
  if (o.kind == "dense") return R"({"attention": "dense"})";
  if (o.kind == "window") return R"({"attention": "sparse", "window": 512})";
  if (o.kind == "strided") {
    return R"({"attention": "sparse", "pattern": "strided", "stride": 128, "span": )" + span +
           R"(, "components": ["local", "strided"], "split": "heads"})";
  }
  if (o.kind == "fixed") {
    return R"({"attention": "sparse", "pattern": "fixed", "block": 128, "summary": 16, "span": )" +
           span + R"(, "components": ["block", "summary"], "split": "heads"})";
  }
  if (o.kind == "bigbird") {
    return R"({"attention": "sparse", "pattern": "bigbird", "block": 64, "window_blocks": 3, )"
           R"("random_blocks": 2, "seed": 0, "span": )" +
           span + "}";
  }
  if (o.kind == "linear") return R"({"attention": "linear", "feature_map": "elu"})";
  if (o.kind == "lsh") {  // every position's window spans the whole sequence
    return R"({"attention": "lsh", "n_hashes": 4, "n_buckets": 64, "chunk_len": 64, "history": )" +
           span + "}";
  }
  Die("unknown --kind " + o.kind + " (dense|window|strided|fixed|bigbird|linear|lsh)");
}

engine::ModelConfig Config(const Options& o) {
  const std::string json = absl::StrCat(
      R"({"architecture": "transfo_xl", "vocab_size": 16, "d_model": )", o.heads * o.head_dim,
      R"(, "n_layer": 1, "n_head": )", o.heads, R"(, "d_head": )", o.head_dim,
      R"(, "d_inner": 16, "mem_len": )", o.kind == "dense" ? 1 : 0,
      R"(, "clamp_len": 0, "same_length": false, "pre_lnorm": false, "untie_r": true, )"
      R"("activation": "relu", "layer_norm_epsilon": 1e-05, "memory_init": "empty", )"
      R"("tie_word_embeddings": false, "torch_dtype": "float32", "layers": [)",
      LayerJson(o), "]}");
  auto config = engine::ParseModelConfig(json);
  if (!config.ok()) Die("layer configuration: " + std::string(config.status().message()));
  return *config;
}

template <typename T>
T Check(absl::StatusOr<T> v, const char* what) {
  if (!v.ok()) Die(std::string(what) + ": " + std::string(v.status().message()));
  return *std::move(v);
}

void Check(const absl::Status& s, const char* what) {
  if (!s.ok()) Die(std::string(what) + ": " + std::string(s.message()));
}

Tensor RandomOn(Backend& be, std::vector<int64_t> shape, std::mt19937& rng) {
  Tensor host = Tensor::Zeros(DType::kF32, std::move(shape));
  std::normal_distribution<float> dist(0.0f, 1.0f);
  for (int64_t i = 0; i < host.numel(); ++i) host.data<float>()[i] = dist(rng);
  return Check(be.CopyFromHost(host), "upload");
}

// (query, key) pairs the layer attends, summed over heads; -1 for linear attention.
int64_t Nonzeros(const Options& o, const engine::LayerConfig& l) {
  if (o.kind == "linear" || o.kind == "lsh") return -1;
  if (o.kind == "dense") return o.len * (o.len + 1) / 2 * o.heads;
  const kernels::SparsePattern pattern = engine::PatternOf(l.sparse);
  std::vector<int64_t> positions;
  int64_t total = 0;
  for (int h = 0; h < o.heads; ++h) {
    for (int64_t p = 0; p < o.len; ++p) {
      positions.clear();
      kernels::AppendAllowedPositions(pattern, h, p, positions);
      total += static_cast<int64_t>(positions.size());
    }
  }
  return total;
}

#if defined(MNEMO_WITH_CUDA)
cudaMemPool_t DevicePool(const std::string& device) {
  const int ordinal = device.size() > 5 ? std::atoi(device.c_str() + 5) : 0;
  cudaMemPool_t pool = nullptr;
  if (cudaDeviceGetDefaultMemPool(&pool, ordinal) != cudaSuccess) Die("no CUDA memory pool");
  return pool;
}
#endif

int Run(const Options& o) {
  std::unique_ptr<Backend> be = Check(engine::MakeBackend(o.device), "backend");
  const engine::ModelConfig config = Config(o);
  const engine::LayerConfig& layer = config.layer(0);
  const int64_t w = static_cast<int64_t>(o.heads) * o.head_dim, t = o.len;
  std::mt19937 rng(o.seed);
  const Tensor qkv = RandomOn(*be, {t, 3 * w}, rng);
  Tensor out = Check(be->Allocate(DType::kF32, {t, w}), "output");
  // Per kind: its inputs and the call.
  Tensor rel, u, v, keys, values, state_s, state_z, input, qk_v, rotations;
  engine::XlMemory memory;
  engine::LshBuckets buckets;
  engine::GlobalStore globals;
  engine::LinearState linear;
  std::vector<int32_t> tokens(static_cast<size_t>(t), 0);
  std::function<absl::Status()> call;
  if (o.kind == "dense") {
    rel = RandomOn(*be, {t, w}, rng);
    u = RandomOn(*be, {o.heads, o.head_dim}, rng);
    v = RandomOn(*be, {o.heads, o.head_dim}, rng);
    memory = engine::XlMemory(Check(be->Allocate(DType::kF32, {1, w}), "memory"),
                              Check(be->Allocate(DType::kF32, {1, w}), "memory"));
    call = [&] {
      return be->RelativeAttention(
          {{&qkv, &memory, &rel, &u, &v, o.heads, o.head_dim, 1, 0, false, &out}});
    };
  } else if (o.kind == "linear") {
    linear.s = Check(be->Allocate(DType::kF32, {o.heads, o.head_dim, o.head_dim}), "state");
    linear.z = Check(be->Allocate(DType::kF32, {o.heads, o.head_dim}), "state");
    input = Check(be->Allocate(DType::kF32, {t, 1}), "input");
    call = [&] {
      return be->LinearAttention({{&qkv, &input, &layer.linear, nullptr, nullptr, nullptr, &linear,
                                   o.heads, o.head_dim, &out}});
    };
  } else if (o.kind == "lsh") {
    // The shared query/key | value rows; the ring (history − 1 rows) takes the new positions'
    // keys, values and buckets but is never advanced, so every call starts from an empty one.
    qk_v = RandomOn(*be, {t, 2 * w}, rng);
    rotations =
        RandomOn(*be, {o.heads, o.head_dim, layer.lsh.n_hashes, layer.lsh.n_buckets / 2}, rng);
    const int64_t ring_rows = std::max<int64_t>(layer.lsh.history - 1, 1);
    memory = engine::XlMemory(Check(be->Allocate(DType::kF32, {ring_rows, w}), "ring"),
                              Check(be->Allocate(DType::kF32, {ring_rows, w}), "ring"));
    buckets.buckets =
        Check(be->Allocate(DType::kI32, {ring_rows, o.heads * layer.lsh.n_hashes}), "ring");
    call = [&] {
      return be->LshAttention(
          {{&qk_v, &memory, &buckets, &layer.lsh, &rotations, o.heads, o.head_dim, &out}});
    };
  } else {
    const int64_t span = std::max<int64_t>(layer.sparse.sparse_span(), 1);
    memory = engine::XlMemory(Check(be->Allocate(DType::kF32, {span, w}), "ring"),
                              Check(be->Allocate(DType::kF32, {span, w}), "ring"));
    call = [&] {
      return be->SparseAttention(
          {{&qkv, &memory, &layer.sparse, o.heads, o.head_dim, &out, tokens.data(), 0, &globals}});
    };
  }
  Check(be->Synchronize(), "set-up");
  for (int i = 0; i < o.warmup; ++i) {
    Check(call(), "warm-up call");
    Check(be->Synchronize(), "warm-up");
  }
#if defined(MNEMO_WITH_CUDA)
  const bool cuda = be->device() != engine::Device::kCpu;
  if (cuda) {
    uint64_t zero = 0;
    cudaMemPoolSetAttribute(DevicePool(o.device), cudaMemPoolAttrUsedMemHigh, &zero);
  }
#endif
  std::vector<double> ms;
  for (int i = 0; i < o.runs; ++i) {
    const auto start = std::chrono::steady_clock::now();
    Check(call(), "call");
    Check(be->Synchronize(), "run");
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
                     .count());
  }
  std::sort(ms.begin(), ms.end());
  const double median = ms[ms.size() / 2];
  std::string memory_field;
#if defined(MNEMO_WITH_CUDA)
  if (cuda) {
    uint64_t high = 0;
    cudaMemPoolGetAttribute(DevicePool(o.device), cudaMemPoolAttrUsedMemHigh, &high);
    memory_field = absl::StrCat("\"device_peak_bytes\":", high);
  }
#endif
  if (memory_field.empty()) {
    rusage usage{};
    getrusage(RUSAGE_SELF, &usage);
    memory_field =
        absl::StrCat("\"peak_rss_bytes\":", static_cast<int64_t>(usage.ru_maxrss) * 1024);
  }
  const int64_t nonzeros = Nonzeros(o, layer);
  std::printf(
      "{\"impl\":\"mnemo\",\"figure\":\"attention\",\"device\":\"%s\",\"kind\":\"%s\","
      "\"len\":%lld,\"heads\":%d,\"head_dim\":%d,\"runs\":%d,\"ms\":{\"min\":%.4f,"
      "\"median\":%.4f,\"max\":%.4f},%s,\"nonzeros\":%s,\"ns_per_nonzero\":%s}\n",
      o.device.c_str(), o.kind.c_str(), static_cast<long long>(t), o.heads, o.head_dim, o.runs,
      ms.front(), median, ms.back(), memory_field.c_str(),
      nonzeros < 0 ? "null" : std::to_string(nonzeros).c_str(),
      nonzeros < 0 ? "null" : absl::StrCat(median * 1e6 / static_cast<double>(nonzeros)).c_str());
  return 0;
}

}  // namespace
}  // namespace mnemo::bench

int main(int argc, char** argv) { return mnemo::bench::Run(mnemo::bench::Parse(argc, argv)); }
