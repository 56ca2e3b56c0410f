#include "engine/api/encoder.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <utility>

#include "absl/strings/str_cat.h"

#include "base/status_macros.h"
#include "engine/encoder/encoder_model.h"

namespace mnemo::engine::api {

std::vector<EncodeWindow> PlanEncodeWindows(int64_t n, int64_t window) {
  if (n <= window) return {{0, n, 0, n}};
  std::vector<int64_t> starts;
  const int64_t stride = std::max<int64_t>(1, window / 2);
  for (int64_t b = 0; b + window < n; b += stride) starts.push_back(b);
  starts.push_back(n - window);  // (after the last stride start, which ends before n)
  std::vector<EncodeWindow> out;
  out.reserve(starts.size());
  for (int64_t b : starts) out.push_back({b, window, 0, 0});
  // Each token's window: the one where it is farthest from an edge, the earlier on a tie. The
  // windows containing a token are consecutive, so the choices are contiguous ranges.
  size_t first = 0;  // the earliest window that may still contain the next token
  for (int64_t t = 0; t < n; ++t) {
    while (starts[first] + window <= t) ++first;
    size_t best = first;
    int64_t best_room = -1;
    for (size_t k = first; k < starts.size() && starts[k] <= t; ++k) {
      const int64_t room = std::min(t - starts[k], starts[k] + window - 1 - t);
      if (room > best_room) best_room = room, best = k;
    }
    EncodeWindow& w = out[best];
    if (w.keep_end == w.keep_begin) w.keep_begin = t;
    w.keep_end = t + 1;
  }
  // A window that keeps nothing (possible only when the last start falls just after another)
  // need not run.
  std::erase_if(out, [](const EncodeWindow& w) { return w.keep_end == w.keep_begin; });
  return out;
}

Encoder::~Encoder() = default;

absl::StatusOr<std::unique_ptr<Encoder>> Encoder::Load(const std::string& dir) {
  std::unique_ptr<Encoder> e(new Encoder());
  ASSIGN_OR_RETURN(e->model_, EncoderModel::Load(dir));
  const std::string spm = dir + "/tokenizer.model";
  std::error_code error;
  if (std::filesystem::exists(spm, error)) {
    ASSIGN_OR_RETURN(e->tokenizer_, LoadSentencePieceTokenizer(spm));
    if (e->tokenizer_->vocab_size() > e->config().vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(spm, " has ", e->tokenizer_->vocab_size(),
                                                     " symbols but the model only ",
                                                     e->config().vocab_size, " ids"));
    }
  }
  return e;
}

const EncoderConfig& Encoder::config() const { return model_->config(); }

absl::StatusOr<Tensor> Encoder::Encode(std::span<const int32_t> ids,
                                       const EncodeOptions& options) const {
  const auto n = static_cast<int64_t>(ids.size());
  const int64_t most = config().max_tokens();
  const int64_t window = options.window_tokens == 0 ? most : options.window_tokens;
  if (window < 2 || window > most) {
    return absl::InvalidArgumentError(absl::StrCat("window of ", window,
                                                   " tokens: it must be in [2, ", most,
                                                   "] (the model's position table)"));
  }
  if (n == 0) return absl::InvalidArgumentError("nothing to encode: no token ids");
  const std::vector<int64_t>& globals = options.global_positions;
  for (size_t g = 0; g < globals.size(); ++g) {
    if (globals[g] < 0 || globals[g] >= n || (g > 0 && globals[g] <= globals[g - 1])) {
      return absl::InvalidArgumentError(
          absl::StrCat("global positions must ascend, each in [0, ", n, "); got ", globals[g]));
    }
  }
  const int64_t d = config().d_model;
  const bool per_token = options.pooling == Pooling::kNone;
  Tensor out = Tensor::Zeros(DType::kF32, {per_token ? n : 1, d});
  float* dst = out.data<float>();
  for (const EncodeWindow& w : PlanEncodeWindows(n, window)) {
    std::vector<int64_t> inside;
    for (int64_t g : globals) {
      if (g >= w.begin && g < w.begin + w.length) inside.push_back(g - w.begin);
    }
    ASSIGN_OR_RETURN(Tensor h, model_->Encode(ids.subspan(w.begin, w.length), inside));
    const float* src = h.data<float>();
    for (int64_t t = w.keep_begin; t < w.keep_end; ++t) {
      const float* row = src + (t - w.begin) * d;
      if (per_token) {
        std::memcpy(dst + t * d, row, d * sizeof(float));
      } else if (options.pooling == Pooling::kMean) {
        for (int64_t e = 0; e < d; ++e) dst[e] += row[e];
      } else if (t == 0) {
        std::memcpy(dst, row, d * sizeof(float));
      }
    }
    if (options.pooling == Pooling::kFirst) break;  // the first window holds token 0
  }
  if (options.pooling == Pooling::kMean) {
    for (int64_t e = 0; e < d; ++e) dst[e] /= static_cast<float>(n);
  }
  return out;
}

}  // namespace mnemo::engine::api
