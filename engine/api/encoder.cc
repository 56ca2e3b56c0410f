#include "engine/api/encoder.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <utility>

#include "absl/strings/str_cat.h"

#include "base/status_macros.h"
#include "engine/encoder/encoder_model.h"

namespace mnemo::engine::api {
namespace {

// Rows one pass of Encode holds at most (more when a single window is longer): bounds the pass's
// activations ([rows, d_inner] floats and the attention's buffers) while keeping products wide.
constexpr int64_t kPassTokens = 8192;

}  // namespace

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

int64_t Encoder::min_window() const { return std::max<int64_t>(2, config().min_tokens()); }

absl::StatusOr<std::vector<EncodeWindow>> Encoder::Plan(int64_t tokens,
                                                        const EncodeOptions& options) const {
  const int64_t most = config().max_tokens();
  const int64_t window = options.window_tokens == 0 ? most : options.window_tokens;
  if (window < min_window() || window > most) {
    return absl::InvalidArgumentError(absl::StrCat("window of ", window, " tokens: it must be in [",
                                                   min_window(), ", ", most,
                                                   "] (the model's passes)"));
  }
  if (tokens <= 0) return absl::InvalidArgumentError("nothing to encode: no token ids");
  const EncoderConfig& c = config();
  if (options.pooling == Pooling::kFunnel) {
    if (!c.funnel()) {
      return absl::InvalidArgumentError(
          absl::StrCat("pooling funnel: the pooled sequence is a Funnel encoder's; this one is ",
                       c.architecture));
    }
    if (tokens > window) {
      return absl::InvalidArgumentError(
          absl::StrCat("pooling funnel returns one pass's pooled sequence: the document's ", tokens,
                       " tokens exceed the window of ", window));
    }
  } else if (c.funnel() && c.decoder_layers == 0) {
    return absl::FailedPreconditionError(
        "a Funnel base model (no decoder) has no per-token vectors: ask for pooling funnel");
  }
  RETURN_IF_ERROR(engine::CheckEncodePositions(config(), options.global_positions,
                                               options.mlm_positions, tokens));
  std::vector<EncodeWindow> windows = PlanEncodeWindows(tokens, window);
  if (options.pooling == Pooling::kFirst) {  // token 0's window and those keeping MLM positions
    const std::vector<int64_t>& m = options.mlm_positions;
    std::erase_if(windows, [&](const EncodeWindow& w) {
      return w.keep_begin != 0 && std::lower_bound(m.begin(), m.end(), w.keep_begin) ==
                                      std::lower_bound(m.begin(), m.end(), w.keep_end);
    });
  }
  return windows;
}

absl::StatusOr<std::vector<EncodedWindow>> Encoder::EncodeBatch(
    std::span<const EncoderSequence> batch) const {
  return model_->EncodeBatch(batch);
}

EncoderSequence WindowSequence(std::span<const int32_t> ids, const EncodeWindow& w,
                               const EncodeOptions& options) {
  EncoderSequence seq{ids.subspan(w.begin, w.length), {}, {}};
  for (int64_t g : options.global_positions) {
    if (g >= w.begin && g < w.begin + w.length) seq.global_positions.push_back(g - w.begin);
  }
  for (int64_t p : options.mlm_positions) {
    if (p >= w.keep_begin && p < w.keep_end) seq.mlm_positions.push_back(p - w.begin);
  }
  return seq;
}

Pooler::Pooler(Pooling pooling, int64_t tokens, int64_t d_model)
    : pooling_(pooling), tokens_(tokens), sum_(Tensor::Zeros(DType::kF32, {1, d_model})) {}

void Pooler::Add(const EncodeWindow& w, const Tensor& hidden) {
  const int64_t d = sum_.dim(1);
  float* dst = sum_.data<float>();
  const float* src = hidden.data<float>();
  if (pooling_ == Pooling::kFirst) {
    if (w.keep_begin == 0) std::memcpy(dst, src, d * sizeof(float));  // (the window begins at 0)
    return;
  }
  for (int64_t t = w.keep_begin; t < w.keep_end; ++t) {
    const float* row = src + (t - w.begin) * d;
    for (int64_t e = 0; e < d; ++e) dst[e] += row[e];
  }
}

Tensor Pooler::Finish() {
  if (pooling_ == Pooling::kMean) {
    float* dst = sum_.data<float>();
    for (int64_t e = 0; e < sum_.dim(1); ++e) dst[e] /= static_cast<float>(tokens_);
  }
  return std::move(sum_);
}

absl::StatusOr<EncodeOutput> Encoder::Encode(std::span<const int32_t> ids,
                                             const EncodeOptions& options) const {
  const auto n = static_cast<int64_t>(ids.size());
  ASSIGN_OR_RETURN(const std::vector<EncodeWindow> windows, Plan(n, options));
  const int64_t d = config().d_model, v = config().vocab_size;
  const bool per_token = options.pooling == Pooling::kNone;
  EncodeOutput out;
  if (per_token) out.vectors = Tensor::Empty(DType::kF32, {n, d});
  const auto mlm = static_cast<int64_t>(options.mlm_positions.size());
  if (mlm > 0) out.mlm_logprobs = Tensor::Empty(DType::kF32, {mlm, v});
  int64_t mlm_done = 0;
  Pooler pooler(options.pooling, n, d);
  // Consecutive windows share a pass up to kPassTokens rows (at least one window each), so the
  // products of short windows run over many rows at once.
  for (size_t first = 0; first < windows.size();) {
    std::vector<EncoderSequence> group;
    int64_t rows = 0;
    size_t last = first;
    for (; last < windows.size(); ++last) {
      const int64_t more = config().pass_rows(windows[last].length);
      if (!group.empty() && rows + more > kPassTokens) break;
      rows += more;
      group.push_back(WindowSequence(ids, windows[last], options));
    }
    ASSIGN_OR_RETURN(std::vector<EncodedWindow> h, EncodeBatch(group));
    for (size_t g = 0; g < group.size(); ++g) {
      const EncodeWindow& w = windows[first + g];
      if (options.pooling == Pooling::kFunnel) {
        out.vectors = std::move(h[g].pooled);  // (the one window)
      } else if (per_token) {
        std::memcpy(out.vectors.data<float>() + w.keep_begin * d,
                    h[g].hidden.data<float>() + (w.keep_begin - w.begin) * d,
                    (w.keep_end - w.keep_begin) * d * sizeof(float));
      } else {
        pooler.Add(w, h[g].hidden);
      }
      const auto picked = static_cast<int64_t>(group[g].mlm_positions.size());
      if (picked > 0) {  // windows keep ascending ranges: the positions come in order
        std::memcpy(out.mlm_logprobs.data<float>() + mlm_done * v, h[g].mlm_logprobs.data<float>(),
                    picked * v * sizeof(float));
        mlm_done += picked;
      }
    }
    first = last;
  }
  if (options.pooling == Pooling::kFunnel) return out;
  if (!per_token) out.vectors = pooler.Finish();
  return out;
}

}  // namespace mnemo::engine::api
