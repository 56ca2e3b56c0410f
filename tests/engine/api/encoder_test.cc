// engine/api/encoder and engine/encoder/encoder_config: the window plan of long documents (one
// pass when it fits; windows every ⌊window/2⌋ tokens, the last ending at the end; every token
// kept once, from the window where it is farthest from an edge, the earlier on a tie), and the
// encoder config's validation (each bad field named; decoder parsing names an encoder as one).
#include "engine/api/encoder.h"

#include <algorithm>
#include <string>
#include <vector>

#include "engine/encoder/encoder_config.h"
#include "engine/model/model_config.h"
#include "gtest/gtest.h"

namespace mnemo::engine::api {
namespace {

TEST(PlanEncodeWindowsTest, OnePassWhenTheDocumentFits) {
  const std::vector<EncodeWindow> plan = PlanEncodeWindows(10, 10);
  ASSERT_EQ(plan.size(), 1u);
  EXPECT_EQ(plan[0].begin, 0);
  EXPECT_EQ(plan[0].length, 10);
  EXPECT_EQ(plan[0].keep_begin, 0);
  EXPECT_EQ(plan[0].keep_end, 10);
}

TEST(PlanEncodeWindowsTest, EveryTokenFromTheWindowWhereItIsFarthestFromAnEdge) {
  for (int64_t window : {2, 3, 7, 8, 16}) {
    for (int64_t n = 1; n <= 70; ++n) {
      SCOPED_TRACE(testing::Message() << "n " << n << " window " << window);
      const std::vector<EncodeWindow> plan = PlanEncodeWindows(n, window);
      int64_t next = 0;  // the kept ranges tile [0, n) in order
      for (size_t k = 0; k < plan.size(); ++k) {
        const EncodeWindow& w = plan[k];
        EXPECT_EQ(w.length, std::min(n, window));
        EXPECT_GE(w.begin, 0);
        EXPECT_LE(w.begin + w.length, n);
        EXPECT_EQ(w.keep_begin, next);
        EXPECT_LT(w.keep_begin, w.keep_end);
        EXPECT_GE(w.keep_begin, w.begin);
        EXPECT_LE(w.keep_end, w.begin + w.length);
        next = w.keep_end;
      }
      EXPECT_EQ(next, n);
      if (n <= window) continue;
      // The definition, token by token, over every start the rule names.
      std::vector<int64_t> starts;
      for (int64_t b = 0; b + window < n; b += std::max<int64_t>(1, window / 2)) {
        starts.push_back(b);
      }
      starts.push_back(n - window);
      for (int64_t t = 0; t < n; ++t) {
        int64_t best = -1, room = -1;
        for (int64_t b : starts) {
          if (b > t || t >= b + window) continue;
          const int64_t r = std::min(t - b, b + window - 1 - t);
          if (r > room) room = r, best = b;  // the earlier window keeps a tie
        }
        const auto owner = std::find_if(plan.begin(), plan.end(), [&](const EncodeWindow& w) {
          return w.keep_begin <= t && t < w.keep_end;
        });
        ASSERT_NE(owner, plan.end());
        EXPECT_EQ(owner->begin, best) << "token " << t;
      }
    }
  }
}

TEST(EncoderConfigTest, ParsesAndNamesEveryBadField) {
  const std::string good = R"({"architecture": "longformer", "vocab_size": 60, "d_model": 32,
      "n_layer": 2, "n_head": 4, "d_head": 8, "d_inner": 64, "activation": "gelu",
      "layer_norm_epsilon": 1e-5, "pad_token_id": 1, "position_rows": 80, "type_vocab_size": 1,
      "attention_window": [4, 8], "torch_dtype": "float32"})";
  auto c = ParseEncoderConfig(good);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->one_sided_window, (std::vector<int64_t>{2, 4}));
  EXPECT_EQ(c->max_tokens(), 78);
  EXPECT_TRUE(IsEncoderArchitecture("longformer"));
  EXPECT_FALSE(IsEncoderArchitecture("transfo_xl"));
  const auto with = [&](const std::string& field, const std::string& value) {
    std::string text = good;
    const size_t at = text.find("\"" + field + "\": ");
    if (at == std::string::npos)
      return text.substr(0, text.size() - 1) + ", \"" + field + "\": " + value + "}";
    const size_t begin = at + field.size() + 4;
    size_t end = begin;
    int depth = 0;
    while (depth > 0 || (text[end] != ',' && text[end] != '}')) {
      depth += text[end] == '[' ? 1 : text[end] == ']' ? -1 : 0;
      ++end;
    }
    return text.substr(0, begin) + value + text.substr(end);
  };
  for (const auto& [field, value] : std::vector<std::pair<std::string, std::string>>{
           {"d_head", "7"},                 // n_head · d_head ≠ d_model
           {"attention_window", "[4]"},     // one per layer
           {"attention_window", "[4, 5]"},  // even
           {"attention_window", "[0, 4]"},  //
           {"pad_token_id", "60"},          // in the vocabulary
           {"position_rows", "2"},          // past the padding offset
           {"activation", "\"tanh\""},      //
           {"torch_dtype", "\"int32\""},    //
           {"layer_norm_epsilon", "0"},     //
           {"pooler", "true"},              // unknown
       }) {
    auto bad = ParseEncoderConfig(with(field, value));
    ASSERT_FALSE(bad.ok()) << field << " = " << value;
    EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
    const std::string message(bad.status().message());
    EXPECT_TRUE(message.find(field) != std::string::npos ||
                (field == "d_head" && message.find("n_head") != std::string::npos))
        << field << ": " << message;
  }
  // The decoders' parser names an encoder as one instead of listing its fields as unknown.
  auto decoder = ParseModelConfig(good);
  ASSERT_FALSE(decoder.ok());
  EXPECT_NE(decoder.status().message().find("encoder"), std::string::npos) << decoder.status();
}

}  // namespace
}  // namespace mnemo::engine::api
