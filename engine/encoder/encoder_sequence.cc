#include "engine/encoder/encoder_sequence.h"

#include "absl/strings/str_cat.h"

namespace mnemo::engine {

absl::Status CheckEncodePositions(const EncoderConfig& config, const std::vector<int64_t>& global,
                                  const std::vector<int64_t>& mlm, int64_t n) {
  for (const auto* list : {&global, &mlm}) {
    const std::vector<int64_t>& g = *list;
    for (size_t k = 0; k < g.size(); ++k) {
      if (g[k] < 0 || g[k] >= n || (k > 0 && g[k] <= g[k - 1])) {
        return absl::InvalidArgumentError(absl::StrCat(list == &global ? "global" : "masked-LM",
                                                       " positions must ascend, each in [0, ", n,
                                                       "); got ", g[k]));
      }
    }
  }
  if (!global.empty() && !config.longformer()) {
    return absl::InvalidArgumentError(absl::StrCat("global positions are Longformer's: a ",
                                                   config.architecture, " encoder has none"));
  }
  if (!mlm.empty() && !config.mlm_head) {
    return absl::FailedPreconditionError(
        "the checkpoint has no masked-LM head (config mlm_head): no MLM log-probabilities");
  }
  return absl::OkStatus();
}

}  // namespace mnemo::engine
