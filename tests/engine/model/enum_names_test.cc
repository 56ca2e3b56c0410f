// The enum name tables (engine/model/enum_names.h): every enumerator has a distinct name that
// parses back to it, unknown names are refused, and config.json parsing accepts exactly the
// table's names.
#include "engine/model/enum_names.h"

#include <set>
#include <string>

#include "engine/model/model_config.h"
#include "gtest/gtest.h"
#include "tests/test_checkpoint.h"

namespace mnemo::engine {
namespace {

template <typename E>
void ExpectRoundTrips(size_t count) {
  const auto& entries = EnumTable<E>::kEntries;
  ASSERT_EQ(entries.size(), count);
  std::set<std::string> seen;
  for (size_t i = 0; i < count; ++i) {
    const E value = static_cast<E>(i);
    const std::string_view name = EnumName(value);
    EXPECT_FALSE(name.empty()) << "enumerator " << i;
    EXPECT_TRUE(seen.insert(std::string(name)).second) << name << " named twice";
    const std::optional<E> parsed = ParseEnum<E>(name);
    ASSERT_TRUE(parsed.has_value()) << name;
    EXPECT_EQ(*parsed, value) << name;
  }
  EXPECT_EQ(EnumNames<E>().size(), count);
  EXPECT_FALSE(ParseEnum<E>("").has_value());
  EXPECT_FALSE(ParseEnum<E>("no_such_name").has_value());
  EXPECT_TRUE(EnumName(static_cast<E>(count)).empty());
}

TEST(EnumNamesTest, EveryValueRoundTripsThroughItsName) {
  ExpectRoundTrips<Activation>(4);
  ExpectRoundTrips<MemoryInit>(2);
  ExpectRoundTrips<AttentionKind>(6);
  ExpectRoundTrips<SparsePattern>(4);
  ExpectRoundTrips<MemoryKind>(2);
  ExpectRoundTrips<Compression>(5);
  ExpectRoundTrips<FeatureMap>(3);
}

TEST(EnumNamesTest, NamesAreTheConfigSpellings) {
  EXPECT_EQ(EnumName(AttentionKind::kLsh), "lsh");
  EXPECT_EQ(EnumName(AttentionKind::kMemoryCompressed), "memory_compressed");
  EXPECT_EQ(EnumName(AttentionKind::kRouting), "routing");
  EXPECT_EQ(EnumName(Compression::kDilatedConv), "dilated_conv");
  EXPECT_EQ(EnumName(SparsePattern::kBigBird), "bigbird");
  EXPECT_EQ(EnumName(FeatureMap::kFavor), "favor");
  EXPECT_EQ(EnumName(MemoryInit::kEmpty), "empty");
  EXPECT_EQ(EnumName(Activation::kGelu), "gelu");
  EXPECT_EQ(EnumName(MemoryKind::kCompressive), "compressive");
}

// config.json parses each table name to its value (so the tables are what parsing uses).
TEST(EnumNamesTest, ConfigParsingUsesTheTables) {
  for (const EnumEntry<Compression>& e : EnumTable<Compression>::kEntries) {
    const std::string layer =
        std::string(R"({"attention": "dense", "memory": "compressive", "compression": ")") +
        std::string(e.name) + R"(", "compression_rate": 2, "cmem_len": 2})";
    const ModelConfig c = test::ConfigWith({layer}, {{"memory_init", "\"zeros\""}}, 4);
    EXPECT_EQ(c.layer(0).dense.compression, e.value) << e.name;
  }
  for (const EnumEntry<Activation>& e : EnumTable<Activation>::kEntries) {
    if (e.value == Activation::kSilu) {  // the gated MLPs': the sliding-window decoders only
      EXPECT_EQ(test::MistralConfig(2, 4).activation, e.value);
      continue;
    }
    if (e.value == Activation::kGeluTanh) {
      EXPECT_EQ(test::Gemma2Config(2, 4, 16).activation, e.value);
      continue;
    }
    const ModelConfig c = test::ConfigWith({R"({"attention": "dense"})"},
                                           {{"activation", "\"" + std::string(e.name) + "\""}});
    EXPECT_EQ(c.activation, e.value) << e.name;
  }
  for (const EnumEntry<FeatureMap>& e : EnumTable<FeatureMap>::kEntries) {
    std::string layer = R"({"attention": "linear", "feature_map": ")" + std::string(e.name) + "\"";
    if (e.value != FeatureMap::kElu) layer += R"(, "num_features": 8)";
    layer += "}";
    EXPECT_EQ(test::ConfigWith({layer}).layer(0).linear.feature_map, e.value) << e.name;
  }
}

}  // namespace
}  // namespace mnemo::engine
