// Sampler: picks the next token from one row of logits. Greedy (temperature 0), temperature,
// top-k, top-p (nucleus) and a CTRL-style repetition penalty, with a seeded generator so a run
// is reproducible; also reports the chosen token's log-probability and the top-n alternatives.
#pragma once

#include <cstdint>
#include <random>
#include <utility>
#include <vector>

#include "absl/status/status.h"

namespace mnemo::engine {

struct SamplingParams {
  float temperature = 1.0f;         // 0 = greedy; otherwise logits are divided by it
  int32_t top_k = 0;                // 0 = no limit
  float top_p = 1.0f;               // (0, 1]; 1 = no limit
  float repetition_penalty = 1.0f;  // ≥ 1 in practice; 1 = off (CTRL: divide positive logits)
  uint64_t seed = 0;
  int32_t top_logprobs = 0;  // alternatives to report per token (0 … 20)
};

// INVALID_ARGUMENT naming the field for values outside the documented ranges.
absl::Status ValidateSamplingParams(const SamplingParams& params);

struct SampledToken {
  int32_t id = 0;
  // log p(id) under the model's distribution (log-softmax of the raw logits, before any
  // penalty, temperature or truncation), so scores are comparable across sampling settings.
  float logprob = 0.0f;
  std::vector<std::pair<int32_t, float>> top;  // the top_logprobs most likely ids, best first
};

class Sampler {
 public:
  explicit Sampler(SamplingParams params);

  // logits: [vocab]; history: ids seen so far (repetition penalty).
  SampledToken Sample(const float* logits, int64_t vocab, const std::vector<int32_t>& history);

  // The distribution Sample draws from, over every id (zeros outside the candidates; one-hot at
  // the argmax when greedy): what speculative decoding accepts and rejects against.
  void Distribution(const float* logits, int64_t vocab, const std::vector<int32_t>& history,
                    std::vector<double>& probs);
  // `id` as Sample would report it: the raw logits' log-probability and the top alternatives.
  SampledToken Report(const float* logits, int64_t vocab, int32_t id);
  // An id drawn with probability proportional to `weights` (≥ 0, some positive).
  int32_t Draw(const std::vector<double>& weights);
  double Uniform();  // [0, 1) with 53 random bits, identical across platforms

 private:
  // Fills order_ / probs_ with the candidates (unnormalised) and returns how many there are.
  int64_t Candidates(const float* logits, int64_t vocab, const std::vector<int32_t>& history);

  SamplingParams params_;
  std::mt19937_64 rng_;
  std::vector<float> work_;
  std::vector<int32_t> order_;
  std::vector<uint8_t> seen_;  // repetition penalty: ids already penalised this step
  std::vector<double> probs_;  // unnormalised probabilities of the candidates
};

// log Σ exp(logits[i]): each exp(logits[i] − max) by the vectorised float exp (≤ 2 ulp), summed in
// double.
float LogSumExp(const float* logits, int64_t n);
// log-softmax of one row into `out` (same length).
void LogSoftmax(const float* logits, int64_t n, float* out);

}  // namespace mnemo::engine
