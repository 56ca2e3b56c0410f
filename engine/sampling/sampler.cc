#include "engine/sampling/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/strings/str_cat.h"

#include "kernels/cpu/elementwise.h"

namespace mnemo::engine {

absl::Status ValidateSamplingParams(const SamplingParams& p) {
  if (!(p.temperature >= 0.0f && p.temperature <= 100.0f)) {
    return absl::InvalidArgumentError("temperature must be in [0, 100]");
  }
  if (p.top_k < 0) return absl::InvalidArgumentError("top_k must be ≥ 0");
  if (!(p.top_p > 0.0f && p.top_p <= 1.0f)) {
    return absl::InvalidArgumentError("top_p must be in (0, 1]");
  }
  if (!(p.repetition_penalty > 0.0f && p.repetition_penalty <= 100.0f)) {
    return absl::InvalidArgumentError("repetition_penalty must be in (0, 100]");
  }
  if (p.top_logprobs < 0 || p.top_logprobs > 20) {
    return absl::InvalidArgumentError("top_logprobs must be in [0, 20]");
  }
  return absl::OkStatus();
}

namespace {

// Floats exponentiated at a time on the stack (ExpInPlace works in place).
constexpr int64_t kExpChunk = 1024;

// out[i] = exp(at(i) − max) for i < n, through the vectorised float exp (kernels/cpu:
// ≤ 2 ulp), returning their sum accumulated in double. glibc's double exp, one call per id, cost
// 233 µs per 32000-id row (Zen 4), twice per sampled token (the draw, the reported log-probability)
// and once per scored token; this costs 50.
template <typename At>
double ExpSum(At at, int64_t n, float max, double* out) {
  float chunk[kExpChunk];
  double total = 0.0;
  for (int64_t i0 = 0; i0 < n; i0 += kExpChunk) {
    const int64_t m = std::min(kExpChunk, n - i0);
    for (int64_t j = 0; j < m; ++j) chunk[j] = at(i0 + j) - max;
    kernels::ExpInPlace(chunk, m);
    double part[8] = {};  // independent sums: one would wait on each add's latency
    int64_t j = 0;
    for (; j + 8 <= m; j += 8) {
      for (int k = 0; k < 8; ++k) part[k] += chunk[j + k];
    }
    for (; j < m; ++j) part[0] += chunk[j];
    for (double p : part) total += p;
    if (out != nullptr) std::copy(chunk, chunk + m, out + i0);
  }
  return total;
}

}  // namespace

float LogSumExp(const float* logits, int64_t n) {
  const float max = kernels::RowMax(logits, n);
  const double sum = ExpSum([&](int64_t i) { return logits[i]; }, n, max, nullptr);
  return max + static_cast<float>(std::log(sum));
}

void LogSoftmax(const float* logits, int64_t n, float* out) {
  const float log_z = LogSumExp(logits, n);
  for (int64_t i = 0; i < n; ++i) out[i] = logits[i] - log_z;
}

Sampler::Sampler(SamplingParams params) : params_(params), rng_(params.seed) {}

double Sampler::Uniform() { return static_cast<double>(rng_() >> 11) * 0x1.0p-53; }

SampledToken Sampler::Report(const float* logits, int64_t vocab, int32_t id) {
  SampledToken result;
  // Reported log-probabilities are the model's: logits[id] − log Z of the raw logits.
  const float log_z = LogSumExp(logits, vocab);
  if (params_.top_logprobs > 0) {
    const int64_t k = std::min<int64_t>(params_.top_logprobs, vocab);
    order_.resize(static_cast<size_t>(vocab));
    std::iota(order_.begin(), order_.end(), 0);
    std::partial_sort(order_.begin(), order_.begin() + k, order_.end(),
                      [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
    for (int64_t i = 0; i < k; ++i) result.top.emplace_back(order_[i], logits[order_[i]] - log_z);
  }
  result.id = id;
  result.logprob = logits[id] - log_z;
  return result;
}

int64_t Sampler::Candidates(const float* logits, int64_t vocab,
                            const std::vector<int32_t>& history) {
  if (params_.temperature == 0.0f && params_.repetition_penalty == 1.0f) {
    // Greedy on the raw logits: the argmax alone, without a copy of the row.
    order_.assign(1, static_cast<int32_t>(std::max_element(logits, logits + vocab) - logits));
    probs_.assign(1, 1.0);
    return 1;
  }
  // Adjusted logits: repetition penalty, then temperature.
  work_.assign(logits, logits + vocab);
  if (params_.repetition_penalty != 1.0f) {
    // Once per distinct seen id (CTRL, Hugging Face), however often it occurred.
    seen_.assign(static_cast<size_t>(vocab), 0);
    for (int32_t id : history) {
      if (id < 0 || id >= vocab || seen_[id]) continue;
      seen_[id] = 1;
      float& l = work_[id];
      l = l > 0.0f ? l / params_.repetition_penalty : l * params_.repetition_penalty;
    }
  }
  if (params_.temperature == 0.0f) {  // greedy: the argmax alone
    order_.assign(
        1, static_cast<int32_t>(std::max_element(work_.begin(), work_.end()) - work_.begin()));
    probs_.assign(1, 1.0);
    return 1;
  }
  for (float& l : work_) l /= params_.temperature;
  // Candidates: every id in id order when nothing truncates the distribution (no sort on the
  // per-token path); otherwise sorted by logit (descending), cut by top-k, then by top-p.
  const bool truncate = params_.top_k > 0 || params_.top_p < 1.0f;
  int64_t keep = params_.top_k > 0 ? std::min<int64_t>(params_.top_k, vocab) : vocab;
  order_.resize(static_cast<size_t>(vocab));
  std::iota(order_.begin(), order_.end(), 0);
  if (truncate) {
    std::partial_sort(order_.begin(), order_.begin() + keep, order_.end(),
                      [&](int32_t a, int32_t b) { return work_[a] > work_[b]; });
  }
  const float max = truncate ? work_[order_[0]] : kernels::RowMax(work_.data(), vocab);
  probs_.resize(static_cast<size_t>(keep));
  const double total =
      ExpSum([&](int64_t i) { return work_[order_[i]]; }, keep, max, probs_.data());
  if (params_.top_p < 1.0f) {
    double cumulative = 0.0;
    int64_t cut = keep;
    for (int64_t i = 0; i < keep; ++i) {
      cumulative += probs_[i] / total;
      if (cumulative >= params_.top_p) {
        cut = i + 1;
        break;
      }
    }
    keep = cut;
  }
  return keep;
}

SampledToken Sampler::Sample(const float* logits, int64_t vocab,
                             const std::vector<int32_t>& history) {
  const int64_t keep = Candidates(logits, vocab, history);
  int32_t chosen = order_[0];
  if (params_.temperature != 0.0f) {
    const double total = std::accumulate(probs_.begin(), probs_.begin() + keep, 0.0);
    const double target = Uniform() * total;
    double running = 0.0;
    chosen = order_[keep - 1];
    for (int64_t i = 0; i < keep; ++i) {
      running += probs_[i];
      if (target < running) {
        chosen = order_[i];
        break;
      }
    }
  }
  return Report(logits, vocab, chosen);
}

void Sampler::Distribution(const float* logits, int64_t vocab, const std::vector<int32_t>& history,
                           std::vector<double>& probs) {
  const int64_t keep = Candidates(logits, vocab, history);
  const double total = std::accumulate(probs_.begin(), probs_.begin() + keep, 0.0);
  probs.assign(static_cast<size_t>(vocab), 0.0);
  for (int64_t i = 0; i < keep; ++i) probs[order_[i]] = probs_[i] / total;
}

int32_t Sampler::Draw(const std::vector<double>& weights) {
  const double total = std::accumulate(weights.begin(), weights.end(), 0.0);
  const double target = Uniform() * total;
  double running = 0.0;
  int32_t last = 0;
  for (size_t i = 0; i < weights.size(); ++i) {
    if (weights[i] <= 0.0) continue;
    last = static_cast<int32_t>(i);
    running += weights[i];
    if (target < running) return last;
  }
  return last;  // rounding left the target at the very end: the last id with weight
}

}  // namespace mnemo::engine
