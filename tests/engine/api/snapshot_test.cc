// Session snapshots (engine/api/snapshot.h): for every layer kind, a state written mid-segment and
// read back continues bit for bit like the original, and its snapshot is byte-identical; every
// truncation, flipped byte, hostile manifest, other model's snapshot, future version and
// out-of-range index content is refused with its status code, never a crash (the asan preset
// runs this suite under ASan+UBSan).
#include "engine/api/snapshot.h"

#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engine/api/model.h"
#include "engine/backend/backend.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/test_checkpoint.h"
#include "xxhash.h"

namespace mnemo::engine::api {
namespace {

using Json = nlohmann::json;
using Fields = std::vector<std::pair<std::string, std::string>>;

struct Case {
  std::string name;
  std::vector<std::string> layers;
  Fields fields;
  int64_t mem_len = 8;
  bool draft = false;
};

const Fields kZeros = {{"memory_init", "\"zeros\""}};
const Fields kReformer = {{"architecture", "\"reformer\""}, {"pre_lnorm", "true"},
                          {"memory_init", "\"empty\""},     {"tie_word_embeddings", "false"},
                          {"axial_pos_shape", "[8, 16]"},   {"axial_pos_embds_dim", "[6, 10]"}};

std::string Compressive(const std::string& f, int rate, const std::string& extra = "") {
  return R"({"attention": "dense", "memory": "compressive", "compression": ")" + f +
         R"(", "compression_rate": )" + std::to_string(rate) + R"(, "cmem_len": 3)" + extra + "}";
}

// Every kind, and the models that combine them. The first run of 13 tokens stops mid-segment and
// (rates 3 and 4, mem_len 8) mid compression group.
const std::string kMemoryCompressed =
    R"({"attention": "memory_compressed", "compression_rate": 3, "cmem_len": 4})";

const std::string kRouting = R"({"attention": "routing", "n_clusters": 3, "history": 7})";

const std::vector<Case>& Cases() {
  static const auto* cases = new std::vector<Case>{
      {"dense_empty", {R"({"attention": "dense"})", R"({"attention": "dense"})"}, {}, 8},
      {"dense_zeros", {R"({"attention": "dense"})"}, kZeros, 8},
      {"max_pool", {Compressive("max_pool", 3)}, {}, 8},
      {"mean_pool", {Compressive("mean_pool", 3)}, kZeros, 8},
      {"conv1d", {Compressive("conv1d", 3)}, {}, 8},
      {"dilated_conv", {Compressive("dilated_conv", 4, R"(, "compression_kernel": 2)")}, {}, 8},
      {"most_used", {Compressive("most_used", 3)}, {}, 8},
      {"linear",
       {R"({"attention": "linear", "feature_map": "elu"})",
        R"({"attention": "linear", "feature_map": "favor", "num_features": 5})",
        R"({"attention": "linear", "feature_map": "rfa", "num_features": 4, "gated": true})"},
       {},
       8},
      {"sparse",
       {R"({"attention": "sparse", "window": 3, "dilation": 2})",
        R"({"attention": "sparse", "pattern": "strided", "stride": 3, "span": 10})",
        R"({"attention": "sparse", "pattern": "fixed", "block": 4, "summary": 2, "span": 12,
            "global_positions": [0, 3, 9, 17], "max_global": 2})",
        R"({"attention": "sparse", "pattern": "bigbird", "block": 3, "window_blocks": 2,
            "random_blocks": 1, "span": 12, "seed": 4, "global_tokens": [1, 2, 3, 4, 5],
            "max_global": 3})"},
       {},
       8},
      {"lsh",
       {R"({"attention": "lsh", "n_hashes": 2, "n_buckets": 4, "chunk_len": 4, "history": 10})"},
       {},
       8},
      {"reformer",
       {R"({"attention": "lsh", "n_hashes": 2, "n_buckets": 6, "chunk_len": 4, "history": 12,
            "sort": "call"})",
        R"({"attention": "sparse", "pattern": "bigbird", "block": 4, "window_blocks": 2,
            "random_blocks": 0, "span": 7})"},
       kReformer,
       0},
      {"mixed",
       {Compressive("most_used", 3), R"({"attention": "linear", "feature_map": "elu"})",
        R"({"attention": "sparse", "window": 4, "global_tokens": [3, 7], "max_global": 2})",
        R"({"attention": "lsh", "n_hashes": 1, "n_buckets": 4, "chunk_len": 3, "history": 9})",
        kMemoryCompressed, kRouting},
       {},
       8},
      {"memory_compressed",
       {kMemoryCompressed,
        R"({"attention": "memory_compressed", "compression_rate": 5, "cmem_len": 2})"},
       {},
       8},
      {"routing", {kRouting, R"({"attention": "routing", "n_clusters": 2, "history": 30})"}, {}, 8},
      {"draft", {R"({"attention": "dense"})", Compressive("max_pool", 3)}, {}, 8, true},
  };
  return *cases;
}

// A loaded model of a case (with its draft), its checkpoint directories kept alive.
struct Loaded {
  std::vector<test::ScopedTempDir> dirs;
  std::unique_ptr<Model> model;
  SnapshotIdentity identity;
};

Loaded LoadCase(const Case& c, const std::string& device, uint32_t seed = 7) {
  Loaded out;
  const ModelConfig config = test::ConfigWith(c.layers, c.fields, c.mem_len);
  out.dirs.push_back(test::WriteCheckpoint(config, seed));
  LoadOptions options;
  options.device = device;
  if (c.draft) {
    const ModelConfig draft = test::ConfigWith(
        {R"({"attention": "sparse", "window": 3, "global_tokens": [2], "max_global": 1})"}, {}, 4);
    out.dirs.push_back(test::WriteCheckpoint(draft, seed + 1));
    options.draft_dir = out.dirs.back().path();
  }
  auto model = Model::Load(out.dirs.front().path(), options);
  EXPECT_TRUE(model.ok()) << model.status();
  if (!model.ok()) return out;
  out.model = std::move(*model);
  auto identity = IdentityOf(*out.model);
  EXPECT_TRUE(identity.ok()) << identity.status();
  if (identity.ok()) out.identity = *identity;
  return out;
}

std::vector<float> Feed(const Model& model, SessionState& state, const std::vector<int32_t>& tokens,
                        const std::vector<int64_t>& lengths) {
  return test::FeedInPieces(model, state, tokens, lengths);
}

SnapshotSession SampleSession() {
  SnapshotSession s;
  s.id = "0123456789abcdef0123456789abcdef";
  s.model_name = "tiny";
  s.state_version = 5;
  s.tokens_seen = 15;
  s.pending = {4, 0, 36};
  s.labels = {{"book", "genesis"}, {"tenant", "a \"quoted\" name"}};
  s.ttl_ms = 3600000;
  s.create_time_unix_ms = 1700000000000;
  s.last_use_unix_ms = 1700000001234;
  SamplingParams p;
  p.temperature = 0.7f;
  p.top_k = 5;
  p.top_p = 0.9f;
  p.repetition_penalty = 1.1f;
  p.seed = std::numeric_limits<uint64_t>::max();
  p.top_logprobs = 2;
  s.default_sampling = p;
  s.durability = Durability::kSync;
  return s;
}

class SnapshotBackendTest : public ::testing::TestWithParam<std::string> {};

TEST_P(SnapshotBackendTest, RestoredStatesContinueBitForBitForEveryKind) {
  if (const auto backend = MakeBackend(GetParam()); !backend.ok()) {
    GTEST_SKIP() << "no " << GetParam() << " backend here: " << backend.status().message();
  }
  for (const Case& c : Cases()) {
    SCOPED_TRACE(c.name);
    Loaded loaded = LoadCase(c, GetParam());
    ASSERT_NE(loaded.model, nullptr);
    const Model& model = *loaded.model;
    const int64_t vocab = model.config().vocab_size;
    const std::vector<int32_t> first = test::RandomTokens(13, vocab, 11);
    const std::vector<int32_t> then = test::RandomTokens(11, vocab, 12);
    auto state = model.NewState();
    ASSERT_TRUE(state.ok()) << state.status();
    Feed(model, *state, first, {7, 5, 1});
    SessionState draft_state;
    if (c.draft) {
      auto d = model.draft()->NewState();
      ASSERT_TRUE(d.ok()) << d.status();
      draft_state = std::move(*d);
      Feed(*model.draft(), draft_state, first, {13});
    }
    const SessionState* draft = c.draft ? &draft_state : nullptr;
    const SnapshotSession session = SampleSession();
    auto bytes = WriteSnapshot(model, loaded.identity, *state, draft, session);
    ASSERT_TRUE(bytes.ok()) << bytes.status();

    auto restored = ReadSnapshot(model, loaded.identity, *bytes);
    ASSERT_TRUE(restored.ok()) << restored.status();
    const SnapshotManifest& m = restored->manifest;
    EXPECT_EQ(m.format_version, kSnapshotFormatVersion);
    EXPECT_EQ(m.model_fingerprint, loaded.identity.model_fingerprint);
    EXPECT_EQ(m.draft_fingerprint, loaded.identity.draft_fingerprint);
    EXPECT_EQ(m.total_bytes, static_cast<int64_t>(bytes->size()));
    EXPECT_EQ(m.state_bytes, static_cast<int64_t>(state->bytes() + draft_state.bytes()));
    EXPECT_EQ(m.session.id, session.id);
    EXPECT_EQ(m.session.pending, session.pending);
    EXPECT_EQ(m.session.labels, session.labels);
    ASSERT_TRUE(m.session.default_sampling.has_value());
    EXPECT_EQ(m.session.default_sampling->temperature, 0.7f);
    EXPECT_EQ(m.session.default_sampling->seed, std::numeric_limits<uint64_t>::max());
    EXPECT_EQ(m.session.durability, Durability::kSync);
    EXPECT_EQ(restored->state.position(), 13);

    // The restored state writes the same bytes.
    auto again = WriteSnapshot(model, loaded.identity, restored->state,
                               c.draft ? &restored->draft_state : nullptr, session);
    ASSERT_TRUE(again.ok()) << again.status();
    EXPECT_TRUE(*again == *bytes) << "the restored state's snapshot differs";

    // Both continue identically, prefill and decode steps alike.
    const std::vector<float> a = Feed(model, *state, then, {4, 1, 1, 5});
    const std::vector<float> b = Feed(model, restored->state, then, {4, 1, 1, 5});
    ASSERT_EQ(a.size(), b.size());
    EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0)
        << "logits differ after the restore";
    if (c.draft) {
      Feed(*model.draft(), draft_state, then, {11});
      Feed(*model.draft(), restored->draft_state, then, {11});
    }
    auto after_a = WriteSnapshot(model, loaded.identity, *state, draft, session);
    auto after_b = WriteSnapshot(model, loaded.identity, restored->state,
                                 c.draft ? &restored->draft_state : nullptr, session);
    ASSERT_TRUE(after_a.ok() && after_b.ok());
    EXPECT_TRUE(*after_a == *after_b) << "the states differ after the same tokens";
  }
}

INSTANTIATE_TEST_SUITE_P(Backends, SnapshotBackendTest, ::testing::ValuesIn(test::TestBackends()),
                         [](const auto& info) { return info.param; });

// ---- Hostile input (CPU) ---------------------------------------------------------------------

uint64_t Le(const std::string& s, size_t offset) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) {
    v |= static_cast<uint64_t>(static_cast<unsigned char>(s[offset + i])) << (8 * i);
  }
  return v;
}
void PutLe(std::string& s, size_t offset, uint64_t v) {
  for (int i = 0; i < 8; ++i) s[offset + i] = static_cast<char>((v >> (8 * i)) & 0xff);
}
size_t AlignUp(size_t n) { return (n + 63) / 64 * 64; }

// The snapshot's manifest and data area (the sections, offsets relative to its start).
struct Parts {
  Json manifest;
  std::string data;
};
Parts Split(const std::string& snap) {
  const size_t len = Le(snap, 16);
  return {Json::parse(snap.substr(32, len)), snap.substr(AlignUp(32 + len))};
}
// A snapshot with `manifest` text (checksummed) and `data`.
std::string Join(const std::string& manifest_text, const std::string& data) {
  std::string out(32, '\0');
  std::memcpy(out.data(), kSnapshotMagic.data(), 8);
  out[8] = static_cast<char>(kSnapshotFormatVersion);
  PutLe(out, 16, manifest_text.size());
  PutLe(out, 24, XXH3_64bits(manifest_text.data(), manifest_text.size()));
  out += manifest_text;
  out.resize(AlignUp(out.size()), '\0');
  return out + data;
}
// `snap` after `edit` changed its manifest and data; section checksums recomputed when asked.
std::string Edited(const std::string& snap, const std::function<void(Json&, std::string&)>& edit,
                   bool rehash_sections = false) {
  Parts p = Split(snap);
  edit(p.manifest, p.data);
  if (rehash_sections) {
    for (Json& s : p.manifest["sections"]) {
      if (!s["offset"].is_number_unsigned() || !s["bytes"].is_number_unsigned() ||
          !s["xxh3"].is_string()) {
        continue;
      }
      const auto off = s["offset"].get<size_t>(), n = s["bytes"].get<size_t>();
      if (off > p.data.size() || n > p.data.size() - off) continue;  // hostile: left as it is
      char hex[17];
      std::snprintf(hex, sizeof(hex), "%016llx",
                    static_cast<unsigned long long>(XXH3_64bits(p.data.data() + off, n)));
      s["xxh3"] = hex;
    }
  }
  return Join(p.manifest.dump(), p.data);
}

class SnapshotHostileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // mixed: compressive, linear, sparse, lsh, memory_compressed, routing
    loaded_ = LoadCase(Cases()[11], "cpu");
    ASSERT_NE(loaded_.model, nullptr);
    auto state = loaded_.model->NewState();
    ASSERT_TRUE(state.ok());
    Feed(*loaded_.model, *state, test::RandomTokens(20, loaded_.model->config().vocab_size, 3),
         {9, 11});
    auto bytes = WriteSnapshot(*loaded_.model, loaded_.identity, *state, nullptr, SampleSession());
    ASSERT_TRUE(bytes.ok()) << bytes.status();
    snap_ = *bytes;
  }
  absl::Status Read(const std::string& bytes) const {
    return ReadSnapshot(*loaded_.model, loaded_.identity, bytes).status();
  }
  // Expects `bytes` to be refused with `code`, the message containing `text`.
  void ExpectRefused(const std::string& bytes, absl::StatusCode code, const std::string& text) {
    const absl::Status s = Read(bytes);
    EXPECT_EQ(s.code(), code) << s;
    EXPECT_NE(s.message().find(text), absl::string_view::npos) << s;
  }

  Loaded loaded_;
  std::string snap_;
};

TEST_F(SnapshotHostileTest, TheOriginalReads) { EXPECT_TRUE(Read(snap_).ok()); }

TEST_F(SnapshotHostileTest, EveryTruncationIsRefused) {
  const Parts parts = Split(snap_);
  const size_t data_offset = snap_.size() - parts.data.size();
  std::vector<size_t> cuts = {0, 7, 8, 31, 32, 33, data_offset - 1, data_offset};
  for (const Json& s : parts.manifest["sections"]) {
    const auto off = data_offset + s["offset"].get<size_t>();
    for (size_t c : {off, off + 1, off + s["bytes"].get<size_t>() - 1}) cuts.push_back(c);
  }
  for (size_t c = 1; c < snap_.size(); c += 41) cuts.push_back(c);
  for (size_t cut : cuts) {
    ASSERT_LT(cut, snap_.size());
    const absl::Status s = Read(snap_.substr(0, cut));
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << "cut at " << cut << ": " << s;
  }
  EXPECT_EQ(Read(snap_ + std::string(1, '\0')).code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(SnapshotHostileTest, FlippedBytesAreRefused) {
  const Parts parts = Split(snap_);
  const size_t manifest_end = 32 + Le(snap_, 16);
  const size_t data_offset = snap_.size() - parts.data.size();
  auto flipped = [&](size_t i) {
    std::string s = snap_;
    s[i] = static_cast<char>(s[i] ^ 0x10);
    return Read(s);
  };
  for (size_t i = 0; i < 32; ++i) {  // header: not a snapshot, another version, bad length/hash
    const absl::Status s = flipped(i);
    EXPECT_FALSE(s.ok()) << "header byte " << i;
    EXPECT_TRUE(s.code() == absl::StatusCode::kInvalidArgument ||
                s.code() == absl::StatusCode::kFailedPrecondition ||
                s.code() == absl::StatusCode::kDataLoss)
        << "header byte " << i << ": " << s;
  }
  for (size_t i = 32; i < manifest_end; i += 7) {
    EXPECT_EQ(flipped(i).code(), absl::StatusCode::kDataLoss) << "manifest byte " << i;
  }
  for (size_t i = manifest_end; i < data_offset; ++i) {
    EXPECT_EQ(flipped(i).code(), absl::StatusCode::kInvalidArgument) << "padding byte " << i;
  }
  for (const Json& sec : parts.manifest["sections"]) {
    const auto off = data_offset + sec["offset"].get<size_t>();
    const auto n = sec["bytes"].get<size_t>();
    for (size_t i : {off, off + n / 2, off + n - 1}) {
      EXPECT_EQ(flipped(i).code(), absl::StatusCode::kDataLoss) << "section byte " << i;
    }
  }
}

TEST_F(SnapshotHostileTest, AnotherModelsSnapshotNamesBothFingerprints) {
  Loaded other = LoadCase(Cases()[11], "cpu", /*seed=*/99);
  ASSERT_NE(other.model, nullptr);
  auto state = other.model->NewState();
  ASSERT_TRUE(state.ok());
  auto bytes = WriteSnapshot(*other.model, other.identity, *state, nullptr, {});
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  const absl::Status s = Read(*bytes);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_NE(s.message().find(other.identity.model_fingerprint), absl::string_view::npos) << s;
  EXPECT_NE(s.message().find(loaded_.identity.model_fingerprint), absl::string_view::npos) << s;
  // A model with a draft refuses a snapshot without one, and the reverse.
  Loaded drafted = LoadCase(Cases().back(), "cpu");
  ASSERT_NE(drafted.model, nullptr);
  SnapshotIdentity mixed = drafted.identity;
  mixed.model_fingerprint = loaded_.identity.model_fingerprint;
  EXPECT_EQ(ReadSnapshot(*loaded_.model, mixed, snap_).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(SnapshotHostileTest, AFutureVersionIsNamed) {
  std::string s = snap_;
  s[8] = 2;
  ExpectRefused(s, absl::StatusCode::kFailedPrecondition, "format version 2");
  ExpectRefused(s, absl::StatusCode::kFailedPrecondition, "reads version 1");
  EXPECT_EQ(ReadSnapshotManifest(s).status().code(), absl::StatusCode::kFailedPrecondition);
  ExpectRefused(Edited(snap_, [](Json& m, std::string&) { m["state_layout"] = 2; }),
                absl::StatusCode::kFailedPrecondition, "state layout 2");
}

TEST_F(SnapshotHostileTest, HostileManifestsAreRefused) {
  using Edit = std::function<void(Json&, std::string&)>;
  const std::vector<std::pair<std::string, Edit>> edits = {
      {"sections[0].offset", [](Json& m, std::string&) { m["sections"][0]["offset"] = -64; }},
      {"overlaps", [](Json& m, std::string&) { m["sections"][1]["offset"] = int64_t{1} << 53; }},
      {"truncated",
       [](Json& m, std::string&) { m["sections"].back()["offset"] = int64_t{1} << 53; }},
      {"sections[0].bytes",
       [](Json& m, std::string&) {
         m["sections"][0]["bytes"] = std::numeric_limits<int64_t>::max();
       }},
      {"overlaps", [](Json& m, std::string&) { m["sections"][1]["offset"] = 0; }},
      {"sections[0].xxh3", [](Json& m, std::string&) { m["sections"][0]["xxh3"] = 12; }},
      {"n_layer",
       [](Json& m, std::string&) {
         m["states"][0]["n_layer"] = std::numeric_limits<uint64_t>::max();
       }},
      {"position", [](Json& m, std::string&) { m["states"][0]["position"] = -5; }},
      {"[2, 5, 7], the model's float32 [2, 6, 6]",
       [](Json& m, std::string&) {
         m["states"][0]["layers"][1]["tensors"][0]["shape"] = {2, 5, 7};
       }},
      {"int32 [2, 6, 6], the model's float32",
       [](Json& m, std::string&) { m["states"][0]["layers"][1]["tensors"][0]["dtype"] = "int32"; }},
      {"unknown dtype",
       [](Json& m, std::string&) { m["states"][0]["layers"][1]["tensors"][0]["dtype"] = "f8"; }},
      {"tensors", [](Json& m, std::string&) { m["states"][0]["layers"][1]["tensors"].erase(1); }},
      {"bytes", [](Json& m, std::string&) { m["states"][0]["layers"][0]["bytes"] = 12; }},
      {"ring start",
       [](Json& m, std::string&) { m["states"][0]["layers"][0]["bookkeeping"][0] = 8; }},
      {"ring size",
       [](Json& m, std::string&) { m["states"][0]["layers"][0]["bookkeeping"][1] = 9; }},
      {"pending_rows",
       [](Json& m, std::string&) { m["states"][0]["layers"][0]["bookkeeping"][4] = 3; }},
      {"tokens_compressed",
       [](Json& m, std::string&) { m["states"][0]["layers"][0]["bookkeeping"][6] = 1; }},
      {"bookkeeping values",
       [](Json& m, std::string&) { m["states"][0]["layers"][1]["bookkeeping"].push_back(0); }},
      {"global store",  // a stored global position at or after the session's position
       [](Json& m, std::string&) {
         Json& b = m["states"][0]["layers"][2]["bookkeeping"];  // window, then store start, size
         b[2] = 0;
         b[3] = 1;
         b[4] = 20;
         b[5] = -1;
       }},
      {"sparse window", [](Json& m, std::string&) { m["states"][0]["position"] = 2; }},
      // A window holding fewer positions than the session has seen: the pattern would look the
      // missing ones up in the global store, which does not hold them (read past its rows).
      {"sparse window",
       [](Json& m, std::string&) { m["states"][0]["layers"][2]["bookkeeping"][1] = 1; }},
      // Memory-compressed rings holding other than the position implies (20 tokens, c = 3,
      // S = 4: 2 open-block rows and 4 compressed blocks): the kernel reads them by position.
      {"memory_compressed",
       [](Json& m, std::string&) { m["states"][0]["layers"][4]["bookkeeping"][1] = 1; }},
      {"memory_compressed",
       [](Json& m, std::string&) { m["states"][0]["layers"][4]["bookkeeping"][3] = 3; }},
      // A routing history holding other than min(position, history − 1) positions.
      {"routing history",
       [](Json& m, std::string&) { m["states"][0]["layers"][5]["bookkeeping"][1] = 2; }},
      {"pending token",
       [](Json& m, std::string&) {
         m["session"]["pending"] = {1, 2, 37};
       }},
      {"pending[]", [](Json& m, std::string&) { m["session"]["pending"] = {-1}; }},
      {"durability", [](Json& m, std::string&) { m["session"]["durability"] = "always"; }},
      {"ttl_ms", [](Json& m, std::string&) { m["session"]["ttl_ms"] = "soon"; }},
      {"default_sampling",
       [](Json& m, std::string&) { m["session"]["default_sampling"]["top_p"] = 7; }},
      {"states",
       [](Json& m, std::string&) {
         m["states"].push_back(m["states"][0]);
         m["states"].push_back(m["states"][0]);
       }},
      {"belongs", [](Json& m, std::string&) { m["states"][0]["layers"][1]["section"] = 0; }},
      {"session", [](Json& m, std::string&) { m.erase("session"); }},
  };
  for (const auto& [what, edit] : edits) {
    const absl::Status s = Read(Edited(snap_, edit, /*rehash_sections=*/true));
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << what << ": " << s;
    EXPECT_NE(s.message().find(what), absl::string_view::npos) << what << ": " << s;
  }
  // The attention kind of a layer is the model's.
  ExpectRefused(
      Edited(snap_,
             [](Json& m, std::string&) { m["states"][0]["layers"][1]["attention"] = "dense"; }),
      absl::StatusCode::kFailedPrecondition, "attention dense");
}

TEST_F(SnapshotHostileTest, AbsurdSizesAreRefusedBeforeParsing) {
  std::string s = snap_;
  PutLe(s, 16, uint64_t{1} << 63);
  ExpectRefused(s, absl::StatusCode::kInvalidArgument, "manifest length");
  EXPECT_EQ(SnapshotManifestPrefixBytes(s).status().code(), absl::StatusCode::kInvalidArgument);
  PutLe(s, 16, 0);
  ExpectRefused(s, absl::StatusCode::kInvalidArgument, "manifest length");
  // A pending list too long for any manifest, and one that fits but is deeply nested.
  ExpectRefused(Edited(snap_,
                       [](Json& m, std::string&) {
                         m["session"]["pending"] = std::vector<int32_t>(600000, 1);
                       }),
                absl::StatusCode::kInvalidArgument, "manifest length");
  ExpectRefused(Join(std::string(5000, '[') + std::string(5000, ']'), Split(snap_).data),
                absl::StatusCode::kInvalidArgument, "nested");
  ExpectRefused(Join("{\"format_version\": 1", Split(snap_).data),
                absl::StatusCode::kInvalidArgument, "not a JSON object");
  ExpectRefused(std::string(64, 'x'), absl::StatusCode::kInvalidArgument, "bad magic");
}

TEST_F(SnapshotHostileTest, LshBucketsOutOfRangeAreRefusedEvenWithValidChecksums) {
  for (const int32_t bad : {4, -1, std::numeric_limits<int32_t>::max()}) {
    const std::string s = Edited(
        snap_,
        [&](Json& m, std::string& data) {
          const Json& lsh = m["states"][0]["layers"][3];
          const auto section = m["sections"][lsh["section"].get<size_t>()]["offset"].get<size_t>();
          const auto off = lsh["tensors"][0]["offset"].get<size_t>();  // the buckets come first
          std::memcpy(data.data() + section + off + 4 * 5, &bad, 4);
        },
        /*rehash_sections=*/true);
    ExpectRefused(s, absl::StatusCode::kInvalidArgument, "lsh buckets");
  }
}

TEST_F(SnapshotHostileTest, RoutingClustersOutOfRangeAreRefusedEvenWithValidChecksums) {
  for (const int32_t bad : {3, -1, std::numeric_limits<int32_t>::max()}) {
    const std::string s = Edited(
        snap_,
        [&](Json& m, std::string& data) {
          const Json& routing = m["states"][0]["layers"][5];
          const auto section =
              m["sections"][routing["section"].get<size_t>()]["offset"].get<size_t>();
          const auto off = routing["tensors"][0]["offset"].get<size_t>();  // clusters come first
          std::memcpy(data.data() + section + off + 4 * 2, &bad, 4);
        },
        /*rehash_sections=*/true);
    ExpectRefused(s, absl::StatusCode::kInvalidArgument, "routing clusters");
  }
}

TEST_F(SnapshotHostileTest, TheManifestReadsFromAPrefix) {
  auto need = SnapshotManifestPrefixBytes(snap_.substr(0, kSnapshotHeaderBytes));
  ASSERT_TRUE(need.ok()) << need.status();
  auto m = ReadSnapshotManifest(snap_.substr(0, static_cast<size_t>(*need)));
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->model_fingerprint, loaded_.identity.model_fingerprint);
  EXPECT_EQ(m->total_bytes, static_cast<int64_t>(snap_.size()));
  EXPECT_EQ(m->session.model_name, "tiny");
  EXPECT_EQ(m->state_bytes, static_cast<int64_t>(loaded_.model->StateBytes()));
  EXPECT_EQ(ReadSnapshotManifest(snap_.substr(0, static_cast<size_t>(*need) - 1)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(SnapshotManifestPrefixBytes(snap_.substr(0, 31)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(SnapshotHostileTest, WritingChecksItsArguments) {
  auto state = loaded_.model->NewState();
  ASSERT_TRUE(state.ok());
  SnapshotSession bad = SampleSession();
  bad.pending = {99};
  EXPECT_EQ(WriteSnapshot(*loaded_.model, loaded_.identity, *state, nullptr, bad).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(WriteSnapshot(*loaded_.model, loaded_.identity, *state, &*state, {}).status().code(),
            absl::StatusCode::kInvalidArgument);
  Loaded other = LoadCase(Cases()[0], "cpu");
  auto foreign = other.model->NewState();
  ASSERT_TRUE(foreign.ok());
  EXPECT_EQ(WriteSnapshot(*loaded_.model, loaded_.identity, *foreign, nullptr, {}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace mnemo::engine::api
