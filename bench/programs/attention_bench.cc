// attention_bench: the CPU attention kernels alone (no projections, no model), one kind at one
// sequence length per process, printed as one JSON line. Run one point per process so that the
// peak RSS it reports belongs to that point alone (bench/runners/run_attention_bench.py runs
// every kind × length and the PyTorch SDPA peer in the same run).
//
//   attention_bench --kind K --len L [--heads H] [--head-dim D] [--runs N] [--warmup W]
//                   [--seed S] [--n-buckets NB]
//
// K: dense    RelativeAttention (Transformer-XL, causal, memory_len 0, no clamp, no same_length):
//             the dense baseline; distance table rk [L, H·d_h] and biases u, v random
//    window   SlidingWindowAttention, W = 512, dilation 1
//    strided  SparsePatternAttention "strided": stride 128, span L, local/strided split by heads
//    fixed    SparsePatternAttention "fixed": block 128, summary 16, span L, block/summary split
//             by heads
//    bigbird  SparsePatternAttention "bigbird": block 64, window_blocks 3, random_blocks 2, span L
//    lsh      LshAttention: n_hashes 4, chunk 64, history L, n_buckets = clamp(2L/chunk, 64, 1024)
//             (or --n-buckets); the timed call includes LshNormalizeKeys, the value copy and
//             LshHash (what the engine's prefill runs before LshAttention)
//    linear   LinearAttention, elu feature map, not gated, state starts at zero
//
// One timed call = a prefill of L new positions on an empty memory, batch 1, inputs random normal
// (std::mt19937). q/k/v live in one [L, 3·H·d_h] buffer as the engine's fused qkv projection
// leaves them (lsh: [L, 2·H·d_h], shared query/key then value). Warm-up W, then N runs; min /
// median / max in milliseconds. peak_rss_bytes = getrusage ru_maxrss · 1024 at the end.
// nonzeros: the (query, key) pairs the pattern attends, summed over heads: exact for dense
// (L·(L+1)/2·H) and for the patterns (kernels::AppendAllowedPositions over every query and
// head); for lsh the upper bound L·H·n_hashes·2·chunk (nonzeros_estimated: true); null for
// linear (no pairs). ns_per_nonzero = ms_median · 1e6 / nonzeros.
#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include <sys/resource.h>

#include "kernels/cpu/kv_span.h"
#include "kernels/cpu/linear_attention.h"
#include "kernels/cpu/lsh_attention.h"
#include "kernels/cpu/relative_attention.h"
#include "kernels/cpu/sparse_attention.h"
#include "kernels/cpu/sparse_pattern.h"
#include "kernels/cpu/thread_pool.h"

namespace {

using mnemo::kernels::KvSpan;
using mnemo::kernels::ThreadPool;

struct Options {
  std::string kind;
  int64_t len = 0;
  int heads = 4;
  int head_dim = 64;
  int runs = 5;
  int warmup = 1;
  uint32_t seed = 0;
  int n_buckets = 0;  // lsh; 0 = automatic
};

[[noreturn]] void Die(const std::string& message) {
  std::fprintf(stderr, "attention_bench: %s\n", message.c_str());
  std::exit(2);
}

Options ParseArgs(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) Die("missing value after " + arg);
      return argv[++i];
    };
    if (arg == "--kind") {
      o.kind = value();
    } else if (arg == "--len") {
      o.len = std::stoll(value());
    } else if (arg == "--heads") {
      o.heads = std::stoi(value());
    } else if (arg == "--head-dim") {
      o.head_dim = std::stoi(value());
    } else if (arg == "--runs") {
      o.runs = std::stoi(value());
    } else if (arg == "--warmup") {
      o.warmup = std::stoi(value());
    } else if (arg == "--seed") {
      o.seed = static_cast<uint32_t>(std::stoul(value()));
    } else if (arg == "--n-buckets") {
      o.n_buckets = std::stoi(value());
    } else if (arg == "--help" || arg == "-h") {
      std::printf(
          "attention_bench --kind dense|window|strided|fixed|bigbird|lsh|linear --len L\n"
          "                [--heads 4] [--head-dim 64] [--runs 5] [--warmup 1] [--seed 0]\n"
          "                [--n-buckets NB (lsh; default clamp(2L/64, 64, 1024))]\n");
      std::exit(0);
    } else {
      Die("unknown argument " + arg);
    }
  }
  if (o.kind.empty() || o.len <= 0) Die("--kind and --len are required (--help)");
  if (o.heads <= 0 || o.head_dim <= 0 || o.runs <= 0 || o.warmup < 0) Die("bad sizes");
  return o;
}

void FillNormal(std::vector<float>& v, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (float& x : v) x = normal(rng);
}

int64_t PeakRssBytes() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<int64_t>(ru.ru_maxrss) * 1024;
}

// The (query, key) pairs `pattern` attends over L new positions starting at position 0, summed
// over heads (no global positions).
int64_t PatternNonzeros(const mnemo::kernels::SparsePattern& pattern, int heads, int64_t len) {
  std::vector<int64_t> positions;
  int64_t total = 0;
  for (int h = 0; h < heads; ++h) {
    for (int64_t p = 0; p < len; ++p) {
      positions.clear();
      mnemo::kernels::AppendAllowedPositions(pattern, h, p, positions);
      total += static_cast<int64_t>(positions.size());
    }
  }
  return total;
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = ParseArgs(argc, argv);
  ThreadPool& pool = ThreadPool::Default();
  const int H = o.heads, dh = o.head_dim;
  const int64_t L = o.len, width = static_cast<int64_t>(H) * dh;
  std::mt19937 rng(o.seed);

  // The kind's call, its inputs and its extra buffers (set up below, outside the timing).
  std::function<void()> call;
  int64_t input_bytes = 0, aux_bytes = 0;
  std::optional<int64_t> nonzeros;
  bool nonzeros_estimated = false;
  std::string params = "{}";  // the kind's parameters, as a JSON object

  std::vector<float> qkv;                                  // [L, 3·width] (lsh: [L, 2·width])
  std::vector<float> out(static_cast<size_t>(L * width));  // [L, width]
  std::vector<float> rk, u, v;                             // dense
  std::vector<int64_t> dilations(static_cast<size_t>(H), 1);
  std::vector<uint8_t> components(static_cast<size_t>(H));
  for (int h = 0; h < H; ++h) components[h] = static_cast<uint8_t>(1u << (h % 2));  // split: heads
  mnemo::kernels::SparsePattern pattern;
  mnemo::kernels::GlobalKeys no_globals;
  const std::vector<uint8_t> no_segment_globals;
  std::vector<float> rotations, lsh_keys, lsh_values, state_s, state_z;  // lsh, linear
  std::vector<int32_t> buckets;
  std::vector<KvSpan> spans;
  std::vector<mnemo::kernels::BucketSpan> bucket_spans;

  const bool is_pattern =
      o.kind == "window" || o.kind == "strided" || o.kind == "fixed" || o.kind == "bigbird";
  if (o.kind == "lsh") {
    qkv.resize(static_cast<size_t>(L * 2 * width));
  } else {
    qkv.resize(static_cast<size_t>(L * 3 * width));
  }
  FillNormal(qkv, rng);
  input_bytes = static_cast<int64_t>(qkv.size() * sizeof(float));
  const float* q = qkv.data();
  if (o.kind != "lsh") spans.push_back({qkv.data() + width, qkv.data() + 2 * width, 3 * width, L});

  if (o.kind == "dense") {
    mnemo::kernels::RelativeAttentionShape shape{H,
                                                 dh,
                                                 L,
                                                 /*memory_len=*/0,
                                                 /*mem_len_max=*/L,
                                                 /*clamp_len=*/0,
                                                 /*same_length=*/false};
    const int64_t rows = mnemo::kernels::RelativeTableRowsNeeded(shape);
    rk.resize(static_cast<size_t>(rows * width));
    u.resize(static_cast<size_t>(width));
    v.resize(static_cast<size_t>(width));
    FillNormal(rk, rng);
    FillNormal(u, rng);
    FillNormal(v, rng);
    aux_bytes = static_cast<int64_t>((rk.size() + u.size() + v.size()) * sizeof(float));
    nonzeros = L * (L + 1) / 2 * H;
    params = "{\"memory_len\":0,\"clamp_len\":0,\"same_length\":false}";
    call = [&, shape] {
      const mnemo::kernels::KvSpan table{rk.data(), nullptr, width, rows};
      mnemo::kernels::RelativeAttention(shape, q, 3 * width, spans, table, u.data(), v.data(),
                                        out.data(), width, pool);
    };
  } else if (o.kind == "window") {
    constexpr int64_t kWindow = 512;
    mnemo::kernels::SlidingWindowShape shape{H, dh, L, 0, kWindow, dilations.data()};
    pattern.kind = mnemo::kernels::SparsePatternKind::kWindow;
    pattern.window = kWindow;
    pattern.dilations = dilations.data();
    pattern.span = kWindow - 1;
    params = "{\"window\":512,\"dilation\":1}";
    call = [&, shape] {
      mnemo::kernels::SlidingWindowAttention(shape, q, 3 * width, spans, out.data(), width, pool);
    };
  } else if (is_pattern) {
    pattern.span = L;
    pattern.head_components = components.data();
    if (o.kind == "strided") {
      pattern.kind = mnemo::kernels::SparsePatternKind::kStrided;
      pattern.stride = 128;
      params = "{\"stride\":128,\"span\":" + std::to_string(L) +
               ",\"components\":[\"local\",\"strided\"],\"split\":\"heads\"}";
    } else if (o.kind == "fixed") {
      pattern.kind = mnemo::kernels::SparsePatternKind::kFixed;
      pattern.block = 128;
      pattern.summary = 16;
      params = "{\"block\":128,\"summary\":16,\"span\":" + std::to_string(L) +
               ",\"components\":[\"block\",\"summary\"],\"split\":\"heads\"}";
    } else {
      pattern.kind = mnemo::kernels::SparsePatternKind::kBigBird;
      pattern.block = 64;
      pattern.window_blocks = 3;
      pattern.random_blocks = 2;
      pattern.seed = 0;
      params = "{\"block\":64,\"window_blocks\":3,\"random_blocks\":2,\"seed\":0,\"span\":" +
               std::to_string(L) + "}";
    }
    mnemo::kernels::SparsePatternShape shape{H, dh, L, 0, 0, 0};
    call = [&, shape] {
      mnemo::kernels::SparsePatternAttention(pattern, shape, q, 3 * width, spans, no_globals,
                                             no_segment_globals, out.data(), width, pool);
    };
  } else if (o.kind == "lsh") {
    constexpr int kHashes = 4;
    constexpr int64_t kChunk = 64;
    int nb = o.n_buckets;
    if (nb <= 0) nb = static_cast<int>(std::clamp<int64_t>(2 * L / kChunk, 64, 1024));
    nb += nb % 2;  // even
    mnemo::kernels::LshShape shape{H, dh, kHashes, nb, kChunk, /*history=*/L, L, 0};
    const int64_t ldb = static_cast<int64_t>(H) * kHashes;
    rotations.resize(static_cast<size_t>(width) * kHashes * (nb / 2));
    FillNormal(rotations, rng);
    lsh_keys.resize(static_cast<size_t>(L * width));
    lsh_values.resize(static_cast<size_t>(L * width));
    buckets.resize(static_cast<size_t>(L * ldb));
    aux_bytes = static_cast<int64_t>((rotations.size() + lsh_keys.size() + lsh_values.size()) *
                                         sizeof(float) +
                                     buckets.size() * sizeof(int32_t));
    spans.push_back({lsh_keys.data(), lsh_values.data(), width, L});
    bucket_spans.push_back({buckets.data(), ldb, L});
    nonzeros = L * H * kHashes * 2 * kChunk;  // upper bound: R rounds × two chunks per query
    nonzeros_estimated = true;
    params = "{\"n_hashes\":4,\"n_buckets\":" + std::to_string(nb) +
             ",\"chunk_len\":64,\"history\":" + std::to_string(L) + "}";
    call = [&, shape, ldb] {
      const int64_t ld = 2 * width;
      mnemo::kernels::LshNormalizeKeys(H, dh, L, q, ld, lsh_keys.data(), width);
      for (int64_t r = 0; r < L; ++r) {
        std::memcpy(lsh_values.data() + r * width, q + r * ld + width, width * sizeof(float));
      }
      mnemo::kernels::LshHash(shape, L, q, ld, rotations.data(), buckets.data(), ldb);
      mnemo::kernels::LshAttention(shape, q, ld, spans, bucket_spans, out.data(), width, pool);
    };
  } else if (o.kind == "linear") {
    mnemo::kernels::LinearAttentionShape shape{H,  dh,    L,     mnemo::kernels::FeatureMap::kElu,
                                               dh, false, 1e-6f, 0};
    const int64_t m = mnemo::kernels::LinearStateFeatures(shape);
    state_s.resize(static_cast<size_t>(H * m * dh));
    state_z.resize(static_cast<size_t>(H * m));
    aux_bytes = static_cast<int64_t>((state_s.size() + state_z.size()) * sizeof(float));
    params = "{\"feature_map\":\"elu\",\"gated\":false}";
    call = [&, shape] {
      std::fill(state_s.begin(), state_s.end(), 0.0f);  // an empty memory every call
      std::fill(state_z.begin(), state_z.end(), 0.0f);
      mnemo::kernels::LinearAttention(shape, qkv.data(), nullptr, nullptr, nullptr, nullptr,
                                      state_s.data(), state_z.data(), out.data(), pool);
    };
  } else {
    Die("unknown --kind " + o.kind + " (dense|window|strided|fixed|bigbird|lsh|linear)");
  }
  if (is_pattern) nonzeros = PatternNonzeros(pattern, H, L);

  for (int i = 0; i < o.warmup; ++i) call();
  std::vector<double> ms;
  for (int i = 0; i < o.runs; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    call();
    const auto t1 = std::chrono::steady_clock::now();
    ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  const double median =
      ms.size() % 2 == 1 ? ms[ms.size() / 2] : 0.5 * (ms[ms.size() / 2 - 1] + ms[ms.size() / 2]);
  // A checksum of the output so the work cannot be optimised away and NaNs show.
  double checksum = 0.0;
  for (float x : out) checksum += x;

  std::string nz = "null", ns = "null";
  if (nonzeros && *nonzeros > 0) {
    nz = std::to_string(*nonzeros);
    char buf[64];
    std::snprintf(buf, sizeof(buf), "%.4g", median * 1e6 / static_cast<double>(*nonzeros));
    ns = buf;
  }
  std::printf("{\"bench\":\"attention\",\"impl\":\"mnemo\",\"kind\":\"%s\",\"len\":%" PRId64
              ",\"heads\":%d,\"head_dim\":%d,\"batch\":1,\"runs\":%d,\"warmup\":%d,\"ms_min\":%.4f,"
              "\"ms_median\":%.4f,\"ms_max\":%.4f,\"peak_rss_bytes\":%" PRId64
              ",\"input_bytes\":%" PRId64 ",\"aux_bytes\":%" PRId64
              ",\"nonzeros\":%s,\"nonzeros_estimated\":%s,\"ns_per_nonzero\":%s,"
              "\"threads\":%d,\"params\":%s,\"checksum\":%.6g}\n",
              o.kind.c_str(), L, H, dh, o.runs, o.warmup, ms.front(), median, ms.back(),
              PeakRssBytes(), input_bytes, aux_bytes, nz.c_str(),
              nonzeros_estimated ? "true" : "false", ns.c_str(), pool.num_threads(), params.c_str(),
              checksum);
  return 0;
}
