// mnemo_bench: one benchmark figure of mnemo's CPU backend on one checkpoint, printed as one JSON
// line. Run one figure per process so that the peak RSS it reports belongs to that figure alone
// (bench/runners/run_cpu_bench.py does this and runs the PyTorch peers on the same weights).
//
//   mnemo_bench --model DIR --figure prefill --segment S [--runs N] [--warmup W]
//               [--segments-per-run K] [--logits last|all]
//   mnemo_bench --model DIR --figure decode [--runs N] [--warmup W] [--decode-steps K]
//   mnemo_bench --model DIR --figure breakdown --segment S   (S = 1: decode step)
//   mnemo_bench --model DIR --figure logits --ids-file IDS --output OUT
//   mnemo_bench --model DIR --device cuda --figure batched-decode --batch B [--decode-steps K]
//   mnemo_bench --model DIR --figure stream --tokens N [--segment S]
//   mnemo_bench --model DIR --figure speculative --draft DRAFT --ids-file IDS [--draft-tokens K]
//               [--segment P] [--decode-steps N] [--runs R]
//   --device cpu|cuda[:N] (default cpu) picks the backend for prefill, decode, batched-decode
//   and logits; breakdown is CPU only.
//
// prefill: a session whose memory is already full (primed with real tokens: mem_len comes from
//   the checkpoint's config) advances by segments of S tokens with LogitsMode::kLast (the state
//   update plus the logits of the segment's last token, as a prompt ingest before generation
//   needs). One run = K segments; tokens/s = K·S / wall time. --logits all: LogitsMode::kAll
//   (every position's logits, the scoring use case) instead.
// decode: a session primed until its memory is full (mem_len tokens, plus compression_rate ·
//   cmem_len more for compressive layers) generates one token per Forward
//   (T = 1, LogitsMode::kLast, next token = argmax of the logits, as greedy generation does).
//   One run = K steps; tokens/s = K / wall time. The memory length is the checkpoint's mem_len.
// breakdown: times the ops one Forward is made of (the same Backend::Linear /
//   Backend::RelativeAttention calls with the same shapes and this checkpoint's weights, each op
//   over all layers' data) and the whole Forward, to show where the time goes; for S = 1 also
//   every weight product of a step in Forward's order (the whole weight set streaming from
//   memory), once as the engine runs them and once split over mnemo's pool with OpenBLAS on one
//   thread, and the latency of an empty ParallelFor. Diagnostic only, in RESULTS.md's analysis.
//   The peak RSS of prefill/decode also comes with rss_after_load_mib and rss_end_mib.
// batched-decode: B sessions with full memories (one primed, the others forked from it) each
//   generate one token per step in one Forward (T = 1 per session): tokens/s = B·K / wall time.
// stream: one session ingests an N-token synthetic document in segments of S (LogitsMode::kNone,
//   the long-document path): tokens/s in each tenth of the stream, the ratio last tenth ÷ first
//   tenth (flat = 1), and the session's state bytes after the first segment and at the end.
// speculative: greedy generation of N tokens after a prompt of P real tokens (run r takes the
//   prompt at offset r·P of the ids file), by the model alone (one Forward per token) and with
//   the draft proposing K tokens per verification pass (engine/sampling/speculative_decoder.h);
//   tokens/s of both, their ratio, the draft's acceptance rate, and whether the tokens agree
//   (they must: greedy speculative output is the model's own).
// decode also reports bytes_per_token: the bytes a step must read at least (every weight matrix
//   and bias it uses, the distance-table rows and the K/V memory its attention reads, compressed
//   memory included, a compressor's weights once per compression_rate steps, the output
//   embedding), for the roofline ratio against the measured copy bandwidth.
// logits: writes the float32 logits [n, vocab] of whitespace-separated ids (one segment,
//   LogitsMode::kAll, fresh session) so that the orchestrator can check that mnemo and the
//   PyTorch peers run the same weights.
//
// Every figure: warm-up W, then N timed runs; min / median / max over the runs.
#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <sys/resource.h>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

#include "engine/attention/dense_attention.h"
#include "engine/backend/backend.h"
#include "engine/checkpoint/safetensors.h"
#include "engine/memory/xl_memory.h"
#include "engine/model/adaptive_vocabulary.h"
#include "engine/model/draft_spec.h"
#include "engine/model/transfo_xl_model.h"
#include "engine/model/transfo_xl_weights.h"
#include "engine/sampling/speculative_decoder.h"
#include "kernels/cpu/thread_pool.h"

namespace mnemo::bench {
namespace {

using engine::LogitsMode;
using engine::SequenceInput;
using engine::SessionState;
using engine::Tensor;
using engine::TransfoXlModel;
using Clock = std::chrono::steady_clock;

struct Options {
  std::string model;
  std::string figure;
  int64_t segment = 128;
  int runs = 7;
  int warmup = 2;
  int segments_per_run = 0;  // 0: enough for ~1024 tokens per run
  int decode_steps = 64;
  std::string ids_file;
  std::string output;
  bool all_logits = false;  // prefill: LogitsMode::kAll instead of kLast
  std::string device = "cpu";
  bool sparse_weights = true;  // --sparse-weights on|off
  engine::CpuWeights cpu_weights =
      engine::CpuWeights::kAsStored;   // --cpu-weights stored|float32|bf16-products
  DType session_memory = DType::kF32;  // --session-memory float32|bfloat16|float16
  int batch = 1;
  int64_t tokens = 1 << 20;  // stream: document length
  std::string draft;         // speculative: the draft checkpoint
  int draft_tokens = 4;      // speculative: proposals per verification
};

[[noreturn]] void Die(const std::string& message) {
  std::fprintf(stderr, "mnemo_bench: %s\n", message.c_str());
  std::exit(1);
}

void Check(const absl::Status& status, const char* what) {
  if (!status.ok()) Die(absl::StrCat(std::string(what), ": ", status.ToString()));
}

SessionState NewState(const TransfoXlModel& model) {
  absl::StatusOr<SessionState> state = model.NewState();
  Check(state.status(), "new session state");
  return std::move(*state);
}

Options ParseArgs(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) Die(absl::StrCat("missing value after ", arg));
      return argv[++i];
    };
    if (arg == "--model") {
      o.model = value();
    } else if (arg == "--figure") {
      o.figure = value();
    } else if (arg == "--segment") {
      o.segment = std::atoll(value().c_str());
    } else if (arg == "--runs") {
      o.runs = std::atoi(value().c_str());
    } else if (arg == "--warmup") {
      o.warmup = std::atoi(value().c_str());
    } else if (arg == "--segments-per-run") {
      o.segments_per_run = std::atoi(value().c_str());
    } else if (arg == "--decode-steps") {
      o.decode_steps = std::atoi(value().c_str());
    } else if (arg == "--logits") {
      const std::string v = value();
      if (v != "last" && v != "all") Die("--logits must be last or all");
      o.all_logits = v == "all";
    } else if (arg == "--ids-file") {
      o.ids_file = value();
    } else if (arg == "--output") {
      o.output = value();
    } else if (arg == "--device") {
      o.device = value();
    } else if (arg == "--sparse-weights") {
      const std::string v = value();
      if (v != "on" && v != "off") Die("--sparse-weights must be on or off");
      o.sparse_weights = v == "on";
    } else if (arg == "--cpu-weights") {
      auto parsed = engine::ParseCpuWeights(value());
      if (!parsed.ok()) Die(std::string(parsed.status().message()));
      o.cpu_weights = *parsed;
    } else if (arg == "--session-memory") {
      auto parsed = engine::ParseSessionMemory(value());
      if (!parsed.ok()) Die(std::string(parsed.status().message()));
      o.session_memory = *parsed;
    } else if (arg == "--batch") {
      o.batch = std::atoi(value().c_str());
    } else if (arg == "--tokens") {
      o.tokens = std::atoll(value().c_str());
    } else if (arg == "--draft") {
      o.draft = value();
    } else if (arg == "--draft-tokens") {
      o.draft_tokens = std::atoi(value().c_str());
    } else if (arg == "--help" || arg == "-h") {
      std::printf(
          "usage: mnemo_bench --model DIR --figure prefill|decode|breakdown [--segment S]\n"
          "       [--runs N] [--warmup W] [--segments-per-run K] [--decode-steps K]\n"
          "       [--logits last|all] [--device cpu|cuda[:N]]\n"
          "       mnemo_bench --model DIR --figure batched-decode --batch B [--device D]\n"
          "       mnemo_bench --model DIR --figure logits --ids-file IDS --output OUT\n"
          "       mnemo_bench --model DIR --figure speculative --draft DIR --ids-file IDS\n"
          "       [--draft-tokens K] [--segment P] [--decode-steps N] [--runs R]\n");
      std::exit(0);
    } else {
      Die(absl::StrCat("unknown flag ", arg));
    }
  }
  if (o.model.empty()) Die("--model is required");
  if (o.figure != "prefill" && o.figure != "decode" && o.figure != "breakdown" &&
      o.figure != "logits" && o.figure != "batched-decode" && o.figure != "stream" &&
      o.figure != "speculative") {
    Die("--figure must be prefill, decode, batched-decode, stream, breakdown, logits or "
        "speculative");
  }
  if (o.figure == "speculative" && (o.draft.empty() || o.ids_file.empty())) {
    Die("--figure speculative needs --draft and --ids-file");
  }
  if (o.draft_tokens < 1 || o.draft_tokens > engine::kMaxDraftTokens) {
    Die("--draft-tokens must be in [1, 64]");
  }
  if (o.tokens < 10) Die("--tokens must be at least 10");
  if (o.figure == "breakdown" && o.device != "cpu") Die("--figure breakdown is CPU only");
  if (o.batch < 1) Die("--batch must be at least 1");
  if (o.figure == "logits" && (o.ids_file.empty() || o.output.empty())) {
    Die("--figure logits needs --ids-file and --output");
  }
  if (o.segment < 1 || o.runs < 1 || o.warmup < 0 || o.decode_steps < 1) Die("bad counts");
  return o;
}

// Resident-set figures from /proc/self/status, in MiB ("VmHWM" = peak, "VmRSS" = now).
double ProcStatusMib(const char* key) {
  std::ifstream in("/proc/self/status");
  std::string line;
  const std::string prefix = absl::StrCat(std::string(key), ":");
  while (std::getline(in, line)) {
    if (line.rfind(prefix, 0) == 0) {
      return std::strtod(line.c_str() + prefix.size(), nullptr) / 1024.0;  // kB
    }
  }
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_maxrss) / 1024.0;
}

// Deterministic token ids in [0, vocab).
class Tokens {
 public:
  explicit Tokens(int64_t vocab) : vocab_(vocab) {}
  std::vector<int32_t> Next(int64_t n) {
    std::vector<int32_t> ids(static_cast<size_t>(n));
    for (auto& id : ids) {
      state_ = state_ * 6364136223846793005ULL + 1442695040888963407ULL;
      id = static_cast<int32_t>((state_ >> 33) % static_cast<uint64_t>(vocab_));
    }
    return ids;
  }

 private:
  int64_t vocab_;
  uint64_t state_ = 0x853c49e6748fea9bULL;
};

struct Summary {
  double min = 0, median = 0, max = 0;
};

Summary Summarise(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  Summary s;
  s.min = v.front();
  s.max = v.back();
  const size_t n = v.size();
  s.median = n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
  return s;
}

std::string Num(double x) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.6g", x);
  return buf;
}

std::string SummaryJson(const Summary& s) {
  return absl::StrCat("{\"min\":", Num(s.min), ",\"median\":", Num(s.median),
                      ",\"max\":", Num(s.max), "}");
}

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// Feeds `tokens` ids through the session in segments of at most `segment` (no logits).
void Prime(TransfoXlModel& model, SessionState& state, Tokens& gen, int64_t tokens,
           int64_t segment) {
  while (tokens > 0) {
    const int64_t n = std::min(tokens, segment);
    const std::vector<int32_t> ids = gen.Next(n);
    Check(model.Forward({SequenceInput{ids.data(), n, &state}}, LogitsMode::kNone, nullptr),
          "prime forward");
    tokens -= n;
  }
}

// Tokens that fill a fresh state's memory: mem_len, plus for compressive layers enough evictions
// to fill the compressed memory (compression_rate · cmem_len; "zeros" memories evict their
// mem_len zero rows first, which compress too, so this is an upper bound).
int64_t FullMemoryTokens(const engine::ModelConfig& c) {
  int64_t extra = 0, span = 0;
  for (int64_t l = 0; l < c.n_layer; ++l) {
    const engine::LayerConfig& lc = c.layer(l);
    if (lc.dense.compressive())
      extra = std::max(extra, lc.dense.compression_rate * lc.dense.cmem_len);
    if (lc.attention == engine::AttentionKind::kSparse) {
      span = std::max(span, lc.sparse.sparse_span());  // a full window ring
    }
  }
  return std::max(c.mem_len + extra, span);
}

int32_t Argmax(const Tensor& logits) {
  const float* p = logits.data<float>();
  const int64_t n = logits.dim(logits.rank() - 1);
  return static_cast<int32_t>(std::max_element(p, p + n) - p);
}

double g_rss_after_load_mib = 0;

// Device memory in use (total − free, the pool's cached blocks counted as free) for GPU runs.
std::string DeviceMemoryJson(const TransfoXlModel& model) {
  const engine::DeviceMemoryInfo info = model.backend().MemoryInfo();
  if (info.total_bytes == 0) return "";
  return absl::StrCat(
      ",\"device_used_mib\":",
      Num(static_cast<double>(info.total_bytes - info.free_bytes) / (1 << 20)),
      ",\"device_total_mib\":", Num(static_cast<double>(info.total_bytes) / (1 << 20)));
}

// Bytes one decode step (T = 1, on `state`'s memory) must read at least. Weight matrices and
// embeddings count at `matrix_bytes` per value (2 when the backend keeps a 16-bit
// checkpoint's type), key/value rings and distance tables at the rings' dtype's size (2 with
// 16-bit session memory), everything else at 4. Compressive layers add their compressed rows' keys
// and values, the distance rows reaching them, and the compressor's weights, read once per
// compression_rate steps.
std::string DecodeBytesJson(const engine::ModelConfig& c, const SessionState& state,
                            int64_t matrix_bytes) {
  const int64_t d = c.d_model, w = c.attn_width(), f = c.d_inner;
  const int64_t clamp = c.clamp_len > 0 ? c.clamp_len : (int64_t{1} << 40);
  // qkv (H_kv key/value heads), o, fc1 (gate | up for the sliding-window decoders), fc2
  const int64_t fc1_rows = c.rotary_decoder ? 2 * f : f;
  int64_t matrices = c.n_layer * (c.qkv_width() * d + d * w + fc1_rows * d + d * f);
  int64_t vectors = c.rotary_decoder
                        ? c.n_layer * (c.gemma2 ? 4 : 2) * d + d + c.d_head / 2  // norms, freqs
                        : c.n_layer * (f + d + 4 * d + 2 * w)  // biases, LayerNorms, u, v
                              + c.vocab_size;                  // output bias
  if (c.adaptive) {
    // Every band's table and projection (the head computes every log-probability), the
    // cluster rows, and the embedding's projection of band 0 (where a frequent token lies).
    const std::vector<engine::VocabularyBand> bands = c.bands();
    for (const engine::VocabularyBand& b : bands) matrices += (b.end - b.begin + d) * b.width;
    matrices += static_cast<int64_t>(bands.size() - 1) * d + bands[0].width * d;
    vectors += bands[0].width;  // the embedding row
  } else {
    matrices += c.vocab_size * d;  // output layer
    vectors += d;                  // embedding row
  }
  const int64_t weights = matrices * matrix_bytes + vectors * 4;
  int64_t memory = 0;
  double compressor = 0;
  for (int64_t l = 0; l < c.n_layer; ++l) {
    const engine::LayerState* ls = l < state.num_layers() ? &state.layer(l) : nullptr;
    const int64_t rows = ls != nullptr && ls->ring() != nullptr ? ls->ring()->size() : 0;
    const auto* dense = dynamic_cast<const engine::DenseLayerState*>(ls);
    const int64_t compressed = dense != nullptr ? dense->compressive.compressed.size() : 0;
    const int64_t ring_bytes =  // keys and values in the ring's dtype (--session-memory)
        ls != nullptr && ls->ring() != nullptr ? DTypeSize(ls->ring()->dtype()) : 4;
    const int64_t ring_width = ls != nullptr && ls->ring() != nullptr ? ls->ring()->width() : w;
    memory += ring_bytes * 2 * (rows + compressed) * ring_width;  // keys, values
    if (c.is_dense(l)) {  // distances: the table is stored as the rings are
      memory += ring_bytes * (std::min(rows + compressed, clamp) + 1) * w;
    }
    const engine::LayerConfig& lc = c.layer(l);
    if (lc.dense.compressive()) {
      compressor += 4.0 * static_cast<double>(d * d * lc.dense.compress_taps() + d) /
                    static_cast<double>(lc.dense.compression_rate);
    }
  }
  memory += static_cast<int64_t>(compressor);
  return absl::StrCat("\"bytes_per_token\":", weights + memory,
                      ",\"weight_bytes_per_token\":", weights,
                      ",\"memory_bytes_per_token\":", memory);
}

std::string CommonJson(const TransfoXlModel& model, const SessionState& state) {
  const engine::ModelConfig& c = model.config();
  int64_t sparse_bytes = 0;
  for (const auto& [bytes, density] : model.SparseWeightSummary()) sparse_bytes += bytes;
  return absl::StrCat(
      "\"sparse_matrices\":", model.SparseWeightSummary().size(),
      ",\"sparse_bytes\":", sparse_bytes, ",", "\"rss_after_load_mib\":", Num(g_rss_after_load_mib),
      ",\"rss_end_mib\":", Num(ProcStatusMib("VmRSS")), ",",
      "\"threads\":{\"pool\":", kernels::ThreadPool::Default().num_threads(),
      ",\"openblas\":", openblas_get_num_threads(), "},\"openblas_core\":\"",
      std::string(openblas_get_corename()), "\",\"openblas_config\":\"",
      std::string(openblas_get_config()), "\",\"model\":{\"n_layer\":", c.n_layer,
      ",\"d_model\":", c.d_model, ",\"n_head\":", c.n_head, ",\"d_head\":", c.d_head,
      ",\"d_inner\":", c.d_inner, ",\"checkpoint_dtype\":\"", DTypeName(c.dtype),
      "\",\"weight_dtype\":\"", DTypeName(model.weights().layers[0].fc1.dtype()),
      "\",\"session_memory\":\"", DTypeName(model.session_memory()), "\"",
      ",\"vocab_size\":", c.vocab_size, ",\"mem_len\":", c.mem_len, ",\"clamp_len\":", c.clamp_len,
      ",\"same_length\":", c.same_length ? "true" : "false",
      ",\"tied\":", c.tie_word_embeddings ? "true" : "false", "},\"state_bytes\":", state.bytes(),
      ",\"memory_rows\":",
      state.num_layers() == 0 || state.layer(0).ring() == nullptr ? 0
                                                                  : state.layer(0).ring()->size(),
      ",\"device\":\"", std::string(model.backend().name()), "\"", DeviceMemoryJson(model));
}

int RunPrefill(const Options& o, TransfoXlModel& model) {
  const engine::ModelConfig& c = model.config();
  const int64_t s = o.segment;
  Tokens gen(c.vocab_size);
  SessionState state = NewState(model);
  // Fill the memory with real positions (mem_len of them, in segments of S).
  Prime(model, state, gen, std::max<int64_t>(c.mem_len, s), s);
  const int k = o.segments_per_run > 0 ? o.segments_per_run
                                       : static_cast<int>(std::max<int64_t>(1, 1024 / s));
  Tensor logits;
  auto segment = [&]() {
    const std::vector<int32_t> ids = gen.Next(s);
    Check(model.Forward({SequenceInput{ids.data(), s, &state}},
                        o.all_logits ? LogitsMode::kAll : LogitsMode::kLast, &logits),
          "prefill forward");
  };
  for (int w = 0; w < o.warmup; ++w) segment();
  std::vector<double> rates;
  for (int r = 0; r < o.runs; ++r) {
    const auto t0 = Clock::now();
    for (int i = 0; i < k; ++i) segment();
    const auto t1 = Clock::now();
    rates.push_back(static_cast<double>(k * s) / Seconds(t0, t1));
  }
  std::printf("{\"impl\":\"mnemo\",\"figure\":\"prefill\",\"segment\":%" PRId64 ",\"mem\":%" PRId64
              ",\"logits\":\"%s\",\"tokens_per_s\":%s,\"runs\":%d,\"tokens_per_run\":%" PRId64
              ",\"warmup_segments\":%d,\"peak_rss_mib\":%s,%s}\n",
              s, c.mem_len, o.all_logits ? "all" : "last", SummaryJson(Summarise(rates)).c_str(),
              o.runs, k * s, o.warmup, Num(ProcStatusMib("VmHWM")).c_str(),
              CommonJson(model, state).c_str());
  return 0;
}

int RunDecode(const Options& o, TransfoXlModel& model) {
  const engine::ModelConfig& c = model.config();
  Tokens gen(c.vocab_size);
  SessionState state = NewState(model);
  Prime(model, state, gen, FullMemoryTokens(c), std::min<int64_t>(c.default_segment_tokens(), 512));
  Tensor logits;
  int32_t token = gen.Next(1)[0];
  auto step = [&]() {
    Check(model.Forward({SequenceInput{&token, 1, &state}}, LogitsMode::kLast, &logits),
          "decode forward");
    token = Argmax(logits);
  };
  for (int w = 0; w < o.warmup * 8; ++w) step();
  std::vector<double> rates;
  for (int r = 0; r < o.runs; ++r) {
    const auto t0 = Clock::now();
    for (int i = 0; i < o.decode_steps; ++i) step();
    const auto t1 = Clock::now();
    rates.push_back(static_cast<double>(o.decode_steps) / Seconds(t0, t1));
  }
  std::printf("{\"impl\":\"mnemo\",\"figure\":\"decode\",\"segment\":1,\"mem\":%" PRId64
              ",\"logits\":\"last\",\"tokens_per_s\":%s,\"ms_per_token\":%s,\"runs\":%d,"
              "\"tokens_per_run\":%d,\"warmup_steps\":%d,\"peak_rss_mib\":%s,%s,%s}\n",
              FullMemoryTokens(c), SummaryJson(Summarise(rates)).c_str(),
              Num(1e3 / Summarise(rates).median).c_str(), o.runs, o.decode_steps, o.warmup * 8,
              Num(ProcStatusMib("VmHWM")).c_str(),
              DecodeBytesJson(
                  c, state, static_cast<int64_t>(DTypeSize(model.weights().layers[0].fc1.dtype())))
                  .c_str(),
              CommonJson(model, state).c_str());
  return 0;
}

int RunStream(const Options& o, TransfoXlModel& model) {
  const engine::ModelConfig& c = model.config();
  Tokens gen(c.vocab_size);
  SessionState state = NewState(model);
  const int64_t tenth = o.tokens / 10;
  std::vector<double> rates;
  size_t bytes_first = 0;
  for (int part = 0; part < 10; ++part) {
    const int64_t end = part == 9 ? o.tokens : (part + 1) * tenth;
    int64_t done = part * tenth;
    const auto t0 = Clock::now();
    while (done < end) {
      const int64_t n = std::min(o.segment, end - done);
      const std::vector<int32_t> ids = gen.Next(n);
      Check(model.Forward({SequenceInput{ids.data(), n, &state}}, LogitsMode::kNone, nullptr),
            "stream forward");
      if (bytes_first == 0) bytes_first = state.bytes();
      done += n;
    }
    rates.push_back(static_cast<double>(end - part * tenth) / Seconds(t0, Clock::now()));
  }
  std::string parts;
  for (double r : rates) absl::StrAppend(&parts, parts.empty() ? "" : ",", Num(r));
  std::printf("{\"impl\":\"mnemo\",\"figure\":\"stream\",\"tokens\":%" PRId64
              ",\"segment\":%" PRId64
              ",\"tokens_per_s_by_tenth\":[%s],\"last_over_first\":%s,"
              "\"state_bytes_after_first_segment\":%zu,\"state_bytes_end\":%zu,"
              "\"position_end\":%" PRId64 ",\"peak_rss_mib\":%s,%s}\n",
              o.tokens, o.segment, parts.c_str(), Num(rates.back() / rates.front()).c_str(),
              bytes_first, state.bytes(), state.position(), Num(ProcStatusMib("VmHWM")).c_str(),
              CommonJson(model, state).c_str());
  return 0;
}

int RunBatchedDecode(const Options& o, TransfoXlModel& model) {
  const engine::ModelConfig& c = model.config();
  Tokens gen(c.vocab_size);
  std::vector<SessionState> states;
  states.push_back(NewState(model));
  Prime(model, states[0], gen, c.mem_len, std::min<int64_t>(c.mem_len, 512));
  for (int b = 1; b < o.batch; ++b) {
    absl::StatusOr<SessionState> fork = model.CloneState(states[0]);
    Check(fork.status(), "fork session state");
    states.push_back(std::move(*fork));
  }
  std::vector<int32_t> tokens = gen.Next(o.batch);
  Tensor logits;
  auto step = [&]() {
    std::vector<SequenceInput> batch;
    batch.reserve(static_cast<size_t>(o.batch));
    for (int b = 0; b < o.batch; ++b) batch.push_back({&tokens[b], 1, &states[b]});
    Check(model.Forward(batch, LogitsMode::kLast, &logits), "batched decode forward");
    const int64_t v = c.vocab_size;
    for (int b = 0; b < o.batch; ++b) {
      const float* row = logits.data<float>() + b * v;
      tokens[b] = static_cast<int32_t>(std::max_element(row, row + v) - row);
    }
  };
  for (int w = 0; w < o.warmup * 4; ++w) step();
  std::vector<double> rates;
  for (int r = 0; r < o.runs; ++r) {
    const auto t0 = Clock::now();
    for (int i = 0; i < o.decode_steps; ++i) step();
    const auto t1 = Clock::now();
    rates.push_back(static_cast<double>(o.decode_steps) * o.batch / Seconds(t0, t1));
  }
  const Summary s = Summarise(rates);
  std::printf("{\"impl\":\"mnemo\",\"figure\":\"batched-decode\",\"batch\":%d,\"mem\":%" PRId64
              ",\"tokens_per_s\":%s,\"ms_per_step\":%s,\"runs\":%d,\"steps_per_run\":%d,"
              "\"state_bytes_total\":%zu,%s}\n",
              o.batch, c.mem_len, SummaryJson(s).c_str(), Num(1e3 * o.batch / s.median).c_str(),
              o.runs, o.decode_steps, states[0].bytes() * states.size(),
              CommonJson(model, states[0]).c_str());
  return 0;
}

// Median wall time in milliseconds of `reps` calls of fn (after one warm-up call).
double TimeMs(int reps, const std::function<void()>& fn) {
  fn();
  std::vector<double> t;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = Clock::now();
    fn();
    t.push_back(1e3 * Seconds(t0, Clock::now()));
  }
  return Summarise(t).median;
}

// Per-kernel timing of one Forward of S tokens (S = 1: a decode step) on a full memory, using the
// same kernel entry points and shapes as TransfoXlModel::Forward and this checkpoint's weights.
int RunBreakdown(const Options& o, TransfoXlModel& model) {
  const engine::ModelConfig& c = model.config();
  if (c.rotary_decoder) {  // (its ops below are the Transformer-XL block's)
    Die(absl::StrCat("--figure breakdown times Transformer-XL blocks; architecture ",
                     c.architecture, " has none (use --figure decode or prefill)"));
  }
  auto file = engine::SafetensorsFile::Open(o.model + "/model.safetensors");
  Check(file.status(), "open safetensors");
  auto weights = engine::LoadTransfoXlWeights(c, **file);
  Check(weights.status(), "load weights");
  const engine::TransfoXlWeights& w = *weights;
  // The ops go through the engine's Backend interface, as TransfoXlModel::Forward calls them.
  std::unique_ptr<engine::Backend> backend = engine::MakeCpuBackend();
  engine::Backend& be = *backend;
  const int64_t s = o.segment, d = c.d_model, hd = c.attn_width(), f = c.d_inner, m = c.mem_len;
  const int reps = s == 1 ? 50 : 5;
  kernels::ThreadPool& pool = kernels::ThreadPool::Default();
  auto filled = [](std::vector<int64_t> shape, float value) {
    Tensor t = Tensor::Zeros(DType::kF32, std::move(shape));
    std::fill(t.data<float>(), t.data<float>() + t.numel(), value);
    return t;
  };
  Tensor x = filled({s, d}, 0.01f), qkv = filled({s, 3 * hd}, 0.01f), attn = filled({s, hd}, 0.0f),
         y = filled({s, d}, 0.0f), inner = filled({s, f}, 0.0f), last = filled({1, d}, 0.01f),
         logits = filled({1, c.adaptive ? 1 : c.vocab_size}, 0.0f);
  // Per-layer full memories and positional tables, so every op streams all layers' data as a
  // real Forward does (timing one layer repeatedly would measure a cache-resident working set).
  const int64_t clamp = c.clamp_len > 0 ? c.clamp_len : (int64_t{1} << 40);
  const int64_t rows = std::min(m + s - 1, clamp) + 1;  // distance-table rows one call reads
  std::vector<engine::XlMemory> memories;
  std::vector<Tensor> tables;
  for (int64_t l = 0; l < c.n_layer; ++l) {
    memories.emplace_back(filled({m, hd}, 0.01f), filled({m, hd}, 0.01f));
    memories.back().MarkFull();
    tables.push_back(filled({rows, hd}, 0.01f));
  }
  auto all_layers =
      [&](const std::function<void(const engine::TransfoXlLayerWeights&, int64_t)>& op) {
        return [&, op] {
          for (int64_t l = 0; l < c.n_layer; ++l) op(w.layers[l], l);
        };
      };
  auto ok = [](const absl::Status& status) { Check(status, "backend op"); };
  // Milliseconds per Forward (all layers).
  std::map<std::string, double> ms;
  ms["qkv"] = TimeMs(
      reps, all_layers([&](const auto& lw, int64_t) { ok(be.Linear(x, lw.qkv, nullptr, qkv)); }));
  ms["o"] = TimeMs(
      reps, all_layers([&](const auto& lw, int64_t) { ok(be.Linear(attn, lw.o, nullptr, y)); }));
  ms["fc1"] = TimeMs(
      reps, all_layers([&](const auto& lw, int64_t) { ok(be.Linear(x, lw.fc1, nullptr, inner)); }));
  ms["fc2"] = TimeMs(reps, all_layers([&](const auto& lw, int64_t) {
                       ok(be.Linear(inner, lw.fc2, &lw.fc2_bias, y));
                     }));
  ms["attention"] =
      TimeMs(reps, all_layers([&](const auto& lw, int64_t l) {
               ok(be.RelativeAttention({engine::RelativeAttentionArgs{
                   &qkv, &memories[l], &tables[l], &lw.dense.r_w_bias, &lw.dense.r_r_bias,
                   static_cast<int>(c.n_head), static_cast<int>(c.d_head), c.mem_len, c.clamp_len,
                   c.same_length, &attn}}));
             }));
  if (c.adaptive) {  // every band's logits and the host's log-probabilities over them
    ms["adaptive_head_last"] = TimeMs(reps, [&] {
      Check(engine::AdaptiveLogProbs(be, c, w.adaptive, last).status(), "adaptive head");
    });
  } else {
    ms["lm_head_last"] =
        TimeMs(reps, [&] { ok(be.Linear(last, w.lm_head, &w.lm_head_bias, logits)); });
  }
  double kernels_total = 0;
  for (const auto& [name, v] : ms) kernels_total += v;

  // Decode only: every weight product of a step in Forward's order (all layers, then the output
  // layer), so the whole weight set streams from memory as in a real step: (a) as the engine
  // runs them (Backend::Linear), (b) split by output rows over mnemo's thread pool, each part a
  // single-threaded OpenBLAS sgemv (one set of threads, no OpenBLAS worker spinning while the
  // pool runs attention).
  std::map<std::string, double> stream_ms;
  // (b) reads the matrices as float32: with 16-bit weights only (a) is timed.
  // (The adaptive head is not one product: timed above only.)
  if (s == 1 && !c.adaptive && w.lm_head.dtype() == DType::kF32) {
    auto gemv_pool = [&](const Tensor& in_vec, const Tensor& wt, const Tensor* bias,
                         Tensor& out_vec) {
      const int64_t rows_out = wt.dim(0), in = wt.dim(1);
      const float* xv = in_vec.data<float>();
      float* out = out_vec.data<float>();
      pool.ParallelFor(rows_out, 64, [&](int64_t r0, int64_t r1) {
        float beta = 0.0f;
        if (bias != nullptr) {
          std::memcpy(out + r0, bias->data<float>() + r0, (r1 - r0) * sizeof(float));
          beta = 1.0f;
        }
        cblas_sgemv(CblasRowMajor, CblasNoTrans, static_cast<int>(r1 - r0), static_cast<int>(in),
                    1.0f, wt.data<float>() + r0 * in, static_cast<int>(in), xv, 1, beta, out + r0,
                    1);
      });
    };
    auto step = [&](bool pooled) {
      return [&, pooled] {
        for (int64_t l = 0; l < c.n_layer; ++l) {
          const engine::TransfoXlLayerWeights& lw = w.layers[l];
          if (pooled) {
            gemv_pool(x, lw.qkv, nullptr, qkv);
            gemv_pool(attn, lw.o, nullptr, y);
            gemv_pool(x, lw.fc1, nullptr, inner);
            gemv_pool(inner, lw.fc2, &lw.fc2_bias, y);
          } else {
            ok(be.Linear(x, lw.qkv, nullptr, qkv));
            ok(be.Linear(attn, lw.o, nullptr, y));
            ok(be.Linear(x, lw.fc1, nullptr, inner));
            ok(be.Linear(inner, lw.fc2, &lw.fc2_bias, y));
          }
        }
        if (pooled) {
          gemv_pool(last, w.lm_head, &w.lm_head_bias, logits);
        } else {
          ok(be.Linear(last, w.lm_head, &w.lm_head_bias, logits));
        }
      };
    };
    // Latency of one ParallelFor over the pool's threads with no work (a wake-up and a join).
    stream_ms["pool_parallel_for_empty_x100"] = TimeMs(reps, [&] {
      for (int i = 0; i < 100; ++i)
        pool.ParallelFor(pool.num_threads(), 1, [](int64_t, int64_t) {});
    });
    stream_ms["engine_linear"] = TimeMs(reps, step(false));
    const int blas_threads = openblas_get_num_threads();
    openblas_set_num_threads(1);
    stream_ms["pool_split_openblas_1"] = TimeMs(reps, step(true));
    openblas_set_num_threads(blas_threads);
  }

  // The whole Forward on a full memory, same S.
  Tokens gen(c.vocab_size);
  SessionState state = NewState(model);
  Prime(model, state, gen, std::max<int64_t>(m, s),
        std::min<int64_t>(std::max<int64_t>(s, 64), 512));
  Tensor out;
  const double forward_ms = TimeMs(reps, [&] {
    const std::vector<int32_t> ids = gen.Next(s);
    Check(model.Forward({SequenceInput{ids.data(), s, &state}}, LogitsMode::kLast, &out),
          "forward");
  });
  std::string parts, stream_parts;
  for (const auto& [name, v] : ms) {
    absl::StrAppend(&parts, parts.empty() ? "" : ",", "\"", name, "\":", Num(v));
  }
  for (const auto& [name, v] : stream_ms) {
    absl::StrAppend(&stream_parts, stream_parts.empty() ? "" : ",", "\"", name, "\":", Num(v));
  }
  std::printf("{\"impl\":\"mnemo\",\"figure\":\"breakdown\",\"segment\":%" PRId64
              ",\"mem\":%" PRId64
              ",\"ms_per_forward\":{%s},\"weight_stream_ms\":{%s},\"layers\":%" PRId64
              ",\"kernels_total_ms\":%s,\"forward_ms\":%s,\"other_ms\":%s,%s}\n",
              s, m, parts.c_str(), stream_parts.c_str(), c.n_layer, Num(kernels_total).c_str(),
              Num(forward_ms).c_str(), Num(forward_ms - kernels_total).c_str(),
              CommonJson(model, state).c_str());
  return 0;
}

std::vector<int32_t> ReadIds(const std::string& path) {
  std::ifstream in(path);
  std::vector<int32_t> ids;
  for (long long id; in >> id;) ids.push_back(static_cast<int32_t>(id));
  if (ids.empty()) Die(absl::StrCat("no ids in ", path));
  return ids;
}

// A fresh state holding `prompt` except its last token, fed in the model's default segments.
SessionState Prefilled(TransfoXlModel& model, const std::vector<int32_t>& prompt) {
  SessionState state = NewState(model);
  const int64_t seg = model.config().default_segment_tokens();
  const int64_t n = static_cast<int64_t>(prompt.size()) - 1;
  for (int64_t b = 0; b < n; b += seg) {
    Check(model.Forward({SequenceInput{prompt.data() + b, std::min(seg, n - b), &state}},
                        LogitsMode::kNone, nullptr),
          "prefill");
  }
  return state;
}

int RunSpeculative(const Options& o, TransfoXlModel& model, TransfoXlModel& draft) {
  const std::vector<int32_t> ids = ReadIds(o.ids_file);
  const int64_t p = o.segment;
  if (static_cast<int64_t>(ids.size()) < p * o.runs) {
    Die(absl::StrCat("--ids-file has ", ids.size(), " ids; ", o.runs, " runs need ", p * o.runs));
  }
  engine::SamplingParams greedy;
  greedy.temperature = 0.0f;
  std::vector<double> alone_rates, spec_rates;
  int64_t accepted = 0, drafted = 0, passes = 0, mismatches = 0;
  SessionState last_state;
  for (int r = 0; r < o.runs + o.warmup; ++r) {
    const bool timed = r >= o.warmup;
    const std::vector<int32_t> prompt(ids.begin() + (r % o.runs) * p,
                                      ids.begin() + (r % o.runs + 1) * p);
    // The model alone.
    SessionState state = Prefilled(model, prompt);
    std::vector<int32_t> alone;
    int32_t next = prompt.back();
    Tensor logits;
    auto t0 = Clock::now();
    for (int i = 0; i < o.decode_steps; ++i) {
      Check(model.Forward({SequenceInput{&next, 1, &state}}, LogitsMode::kLast, &logits), "decode");
      next = Argmax(logits);
      alone.push_back(next);
    }
    const double alone_s = Seconds(t0, Clock::now());
    // With the draft.
    SessionState target_state = Prefilled(model, prompt);
    SessionState draft_state = Prefilled(draft, prompt);
    auto decoder = engine::SpeculativeDecoder::Create(model, &target_state, draft, &draft_state,
                                                      greedy, o.draft_tokens, prompt);
    Check(decoder.status(), "speculative decoder");
    std::vector<int32_t> spec;
    t0 = Clock::now();
    while (static_cast<int>(spec.size()) < o.decode_steps) {
      auto more = decoder->Next();
      Check(more.status(), "speculative step");
      for (const engine::SampledToken& t : *more) spec.push_back(t.id);
    }
    const double spec_s = Seconds(t0, Clock::now());
    if (!timed) continue;
    spec.resize(alone.size());
    mismatches += spec != alone;
    alone_rates.push_back(o.decode_steps / alone_s);
    // Tokens beyond decode_steps were paid for; count them (they are the model's own tokens).
    spec_rates.push_back(static_cast<double>(decoder->stats().emitted) / spec_s);
    accepted += decoder->stats().accepted;
    drafted += decoder->stats().drafted;
    passes += decoder->stats().cycles;
    last_state = std::move(target_state);
  }
  const Summary a = Summarise(alone_rates), s = Summarise(spec_rates);
  std::printf(
      "{\"impl\":\"mnemo\",\"figure\":\"speculative\",\"draft\":\"%s\","
      "\"draft_tokens\":%d,\"prompt_tokens\":%" PRId64
      ",\"tokens_per_run\":%d,\"runs\":%d,"
      "\"alone_tokens_per_s\":%s,\"speculative_tokens_per_s\":%s,\"speedup\":%s,"
      "\"acceptance\":%s,\"tokens_per_pass\":%s,\"greedy_identical\":%s,"
      "\"draft_layers\":%" PRId64 ",%s}\n",
      o.draft.c_str(), o.draft_tokens, p, o.decode_steps, o.runs, SummaryJson(a).c_str(),
      SummaryJson(s).c_str(), Num(s.median / a.median).c_str(),
      Num(static_cast<double>(accepted) / static_cast<double>(drafted)).c_str(),
      Num(static_cast<double>(accepted + passes) / static_cast<double>(passes)).c_str(),
      mismatches == 0 ? "true" : "false", draft.config().n_layer,
      CommonJson(model, last_state).c_str());
  return mismatches == 0 ? 0 : 1;
}

int RunLogits(const Options& o, TransfoXlModel& model) {
  const std::vector<int32_t> ids = ReadIds(o.ids_file);
  SessionState state = NewState(model);
  Tensor logits;
  Check(model.Forward({SequenceInput{ids.data(), static_cast<int64_t>(ids.size()), &state}},
                      LogitsMode::kAll, &logits),
        "logits forward");
  std::ofstream out(o.output, std::ios::binary);
  out.write(static_cast<const char*>(logits.raw()), static_cast<std::streamsize>(logits.bytes()));
  if (!out) Die(absl::StrCat("cannot write ", o.output));
  return 0;
}

int Main(int argc, char** argv) {
  const Options o = ParseArgs(argc, argv);
  auto backend = engine::MakeBackend(o.device);
  Check(backend.status(), "backend");
  engine::ModelOptions model_options;
  model_options.sparse_weights = o.sparse_weights;
  model_options.cpu_weights = o.cpu_weights;
  model_options.session_memory = o.session_memory;
  auto loaded = TransfoXlModel::Load(o.model, std::move(*backend), model_options);
  Check(loaded.status(), "load");
  TransfoXlModel& model = **loaded;
  g_rss_after_load_mib = ProcStatusMib("VmRSS");
  if (o.figure == "prefill") return RunPrefill(o, model);
  if (o.figure == "decode") return RunDecode(o, model);
  if (o.figure == "logits") return RunLogits(o, model);
  if (o.figure == "batched-decode") return RunBatchedDecode(o, model);
  if (o.figure == "stream") return RunStream(o, model);
  if (o.figure == "speculative") {
    auto draft_backend = engine::MakeBackend(o.device);
    Check(draft_backend.status(), "backend");
    auto draft = TransfoXlModel::Load(o.draft, std::move(*draft_backend), model_options);
    Check(draft.status(), "load draft");
    return RunSpeculative(o, model, **draft);
  }
  return RunBreakdown(o, model);
}

}  // namespace
}  // namespace mnemo::bench

int main(int argc, char** argv) { return mnemo::bench::Main(argc, argv); }
