// encoder_bench: one encoder checkpoint over one document length, one pass (or the windows the
// document needs), printed as one JSON line. Run one length per process so that the peak RSS it
// reports belongs to that length alone (bench/runners/run_encoder_bench.py runs every length and
// Hugging Face's model at the same lengths in the same run).
//
//   encoder_bench --model DIR --len L [--runs N] [--warmup W] [--global-first] [--seed S]
//
// The document: L token ids uniform in [3, vocab) from std::mt19937(seed); with --global-first
// the first token attends globally (as the published Longformer models expect). Warm-up W, then
// N timed calls of api::Encoder::Encode (every token's vector); min / median / max in ms,
// tokens_per_s = L / median. peak_rss_bytes = getrusage ru_maxrss · 1024 at the end; load_ms is
// the checkpoint's load.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include <sys/resource.h>

#include "engine/api/encoder.h"

namespace {

double Ms(std::chrono::steady_clock::duration d) {
  return std::chrono::duration<double, std::milli>(d).count();
}

int Fail(const std::string& what) {
  std::fprintf(stderr, "encoder_bench: %s\n", what.c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  std::string model;
  long long len = 0, runs = 3, warmup = 1, seed = 1;
  bool global_first = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const bool has_value = i + 1 < argc;
    if (a == "--model" && has_value) {
      model = argv[++i];
    } else if (a == "--len" && has_value) {
      len = std::atoll(argv[++i]);
    } else if (a == "--runs" && has_value) {
      runs = std::atoll(argv[++i]);
    } else if (a == "--warmup" && has_value) {
      warmup = std::atoll(argv[++i]);
    } else if (a == "--seed" && has_value) {
      seed = std::atoll(argv[++i]);
    } else if (a == "--global-first") {
      global_first = true;
    } else {
      return Fail(
          "usage: encoder_bench --model DIR --len L [--runs N] [--warmup W] "
          "[--global-first] [--seed S]");
    }
  }
  if (model.empty() || len < 1 || runs < 1 || warmup < 0) return Fail("bad arguments");
  namespace api = mnemo::engine::api;
  const auto t0 = std::chrono::steady_clock::now();
  auto encoder = api::Encoder::Load(model);
  if (!encoder.ok()) return Fail(encoder.status().ToString());
  const double load_ms = Ms(std::chrono::steady_clock::now() - t0);
  const api::EncoderConfig& c = (*encoder)->config();
  std::mt19937 rng(static_cast<uint32_t>(seed));
  std::uniform_int_distribution<int32_t> pick(3, static_cast<int32_t>(c.vocab_size - 1));
  std::vector<int32_t> ids(static_cast<size_t>(len));
  for (int32_t& id : ids) id = pick(rng);
  api::EncodeOptions options;
  if (global_first) options.global_positions = {0};
  std::vector<double> ms;
  for (long long r = 0; r < warmup + runs; ++r) {
    const auto start = std::chrono::steady_clock::now();
    auto out = (*encoder)->Encode(ids, options);
    const double took = Ms(std::chrono::steady_clock::now() - start);
    if (!out.ok()) return Fail(out.status().ToString());
    if (r >= warmup) ms.push_back(took);
  }
  std::sort(ms.begin(), ms.end());
  const double median = ms[ms.size() / 2];
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  std::printf(
      "{\"bench\": \"encoder\", \"impl\": \"mnemo\", \"architecture\": \"%s\", \"len\": %lld, "
      "\"d_model\": %lld, \"n_layer\": %lld, \"windows\": %lld, \"max_tokens\": %lld, "
      "\"global_first\": %s, \"runs\": %lld, \"warmup\": %lld, \"ms_min\": %.3f, "
      "\"ms_median\": %.3f, \"ms_max\": %.3f, \"tokens_per_s\": %.1f, \"load_ms\": %.1f, "
      "\"peak_rss_bytes\": %lld}\n",
      c.architecture.c_str(), len, static_cast<long long>(c.d_model),
      static_cast<long long>(c.n_layer),
      static_cast<long long>(api::PlanEncodeWindows(len, c.max_tokens()).size()),
      static_cast<long long>(c.max_tokens()), global_first ? "true" : "false", runs, warmup,
      ms.front(), median, ms.back(), static_cast<double>(len) / (median / 1e3), load_ms,
      static_cast<long long>(usage.ru_maxrss) * 1024);
  return 0;
}
