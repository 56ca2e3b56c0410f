// engine/checkpoint/safetensors and the weight loader on top of it: a valid file round-trips; each
// malformed header gives INVALID_ARGUMENT with a specific message; every truncation of a valid
// file is rejected without crashing; LoadTransfoXlWeights names missing, extra, misshapen and
// mistyped tensors.
#include "engine/checkpoint/safetensors.h"

#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "engine/model/transfo_xl_weights.h"
#include "gtest/gtest.h"
#include "tests/test_checkpoint.h"

namespace mnemo::engine {
namespace {

using test::RawTensor;

std::string F32(const std::vector<float>& v) { return test::FloatBytes(v, DType::kF32); }

std::vector<RawTensor> SampleTensors() {
  return {
      RawTensor{"a", "F32", {2, 3}, F32({1, 2, 3, 4, 5, 6})},
      RawTensor{"b.half", "F16", {3}, test::FloatBytes({0.5f, -2.0f, 65504.0f}, DType::kF16)},
      RawTensor{"c.bf16", "BF16", {1, 2}, test::FloatBytes({1.5f, -0.25f}, DType::kBF16)},
      RawTensor{"d.ints", "I32", {2}, test::FloatBytes({7.0f, -9.0f}, DType::kI32)},
      RawTensor{"e.scalar", "F32", {}, F32({42.0f})},
      RawTensor{"f.empty", "F32", {0, 4}, ""},
  };
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> Parse(const std::string& bytes) {
  return SafetensorsFile::FromBuffer(reinterpret_cast<const unsigned char*>(bytes.data()),
                                     bytes.size(), "test.safetensors");
}

// Parsing fails with INVALID_ARGUMENT whose message contains `substring`.
void ExpectError(const std::string& bytes, const std::string& substring) {
  auto file = Parse(bytes);
  ASSERT_FALSE(file.ok()) << "accepted a file expected to fail with \"" << substring << "\"";
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument) << file.status();
  EXPECT_NE(std::string(file.status().message()).find(substring), std::string::npos)
      << "message \"" << file.status().message() << "\" lacks \"" << substring << "\"";
  EXPECT_NE(std::string(file.status().message()).find("test.safetensors"), std::string::npos)
      << "message does not name the file: " << file.status().message();
}

// The 8-byte little-endian header length field.
std::string LengthPrefix(uint64_t n) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out;
}

// A header whose single tensor entry is `entry` over `data`.
std::string OneTensor(const std::string& entry, const std::string& data) {
  return test::SafetensorsFromHeader("{\"t\":" + entry + "}", data);
}

TEST(SafetensorsTest, ValidFileRoundTrips) {
  const std::string bytes =
      test::SafetensorsBytes(SampleTensors(), {{"format", "pt"}, {"note", "hello"}});
  test::ScopedTempDir dir("st");
  const std::string path = dir.File("model.safetensors");
  test::WriteFile(path, bytes);
  auto opened = SafetensorsFile::Open(path);
  ASSERT_TRUE(opened.ok()) << opened.status();
  const SafetensorsFile& file = **opened;
  EXPECT_EQ(file.path(), path);
  EXPECT_EQ(file.tensors().size(), 6u);
  EXPECT_EQ(file.metadata().at("format"), "pt");
  EXPECT_EQ(file.metadata().at("note"), "hello");
  EXPECT_EQ(file.Find("missing"), nullptr);

  for (const RawTensor& want : SampleTensors()) {
    const SafetensorsTensor* t = file.Find(want.name);
    ASSERT_NE(t, nullptr) << want.name;
    EXPECT_EQ(t->name, want.name);
    EXPECT_EQ(t->shape, want.shape) << want.name;
    EXPECT_EQ(test::SafetensorsDTypeName(t->dtype), want.dtype) << want.name;
    ASSERT_EQ(t->size_bytes, want.bytes.size()) << want.name;
    EXPECT_EQ(std::memcmp(t->data, want.bytes.data(), want.bytes.size()), 0) << want.name;
  }
  const SafetensorsTensor* a = file.Find("a");
  std::vector<float> values(6);
  ConvertToFloat(a->dtype, a->data, values.data(), 6);
  EXPECT_EQ(values, (std::vector<float>{1, 2, 3, 4, 5, 6}));
  const SafetensorsTensor* h = file.Find("b.half");
  std::vector<float> halves(3);
  ConvertToFloat(h->dtype, h->data, halves.data(), 3);
  EXPECT_EQ(halves, (std::vector<float>{0.5f, -2.0f, 65504.0f}));
}

TEST(SafetensorsTest, FromBufferMatchesOpen) {
  const std::string bytes = test::SafetensorsBytes(SampleTensors());
  auto file = Parse(bytes);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->tensors().size(), 6u);
  EXPECT_TRUE((*file)->metadata().empty());
  // Data pointers point into the caller's buffer.
  const SafetensorsTensor* e = (*file)->Find("e.scalar");
  ASSERT_NE(e, nullptr);
  EXPECT_GE(reinterpret_cast<const char*>(e->data), bytes.data());
  EXPECT_LT(reinterpret_cast<const char*>(e->data), bytes.data() + bytes.size());
}

TEST(SafetensorsTest, EmptyHeaderObjectIsValid) {
  auto file = Parse(test::SafetensorsFromHeader("{}", ""));
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_TRUE((*file)->tensors().empty());
}

TEST(SafetensorsTest, OpenMissingFileIsNotFound) {
  test::ScopedTempDir dir("st");
  auto file = SafetensorsFile::Open(dir.File("nope.safetensors"));
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(std::string(file.status().message()).find("nope.safetensors"), std::string::npos);
}

TEST(SafetensorsTest, OpenDirectoryIsRejected) {
  test::ScopedTempDir dir("st");
  auto file = SafetensorsFile::Open(dir.path());
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(SafetensorsTest, FileShorterThanEightBytes) {
  for (size_t n = 0; n < 8; ++n) ExpectError(std::string(n, '\0'), "too short");
}

TEST(SafetensorsTest, HeaderLengthPastEndOfFile) {
  ExpectError(LengthPrefix(3) + "{}", "truncated");  // one byte short
  ExpectError(LengthPrefix(1000) + "{}", "truncated");
  // A header length of exactly 100 MB in a tiny file is truncation, not the size limit.
  ExpectError(LengthPrefix(uint64_t{100} << 20) + "{}", "truncated");
  // A valid file cut inside its header.
  const std::string bytes = test::SafetensorsBytes(SampleTensors());
  ExpectError(bytes.substr(0, 20), "truncated");
}

TEST(SafetensorsTest, HeaderLengthAbove100MB) {
  for (uint64_t n : {(uint64_t{100} << 20) + 1, uint64_t{1} << 40, ~uint64_t{0}}) {
    ExpectError(LengthPrefix(n) + "{}", "100 MB");
  }
}

TEST(SafetensorsTest, HeaderNotJson) {
  ExpectError(test::SafetensorsFromHeader("{\"t\":", ""), "not valid JSON");
  ExpectError(test::SafetensorsFromHeader("", ""), "not valid JSON");
  ExpectError(test::SafetensorsFromHeader("{} trailing", ""), "not valid JSON");
  ExpectError(test::SafetensorsFromHeader(std::string("{\0}", 3), ""), "not valid JSON");
}

TEST(SafetensorsTest, HeaderNotAnObject) {
  ExpectError(test::SafetensorsFromHeader("[1, 2]", ""), "must be a JSON object");
  ExpectError(test::SafetensorsFromHeader("17", ""), "must be a JSON object");
  ExpectError(test::SafetensorsFromHeader("\"x\"", ""), "must be a JSON object");
}

TEST(SafetensorsTest, TensorEntryNotAnObject) {
  ExpectError(OneTensor("[1]", ""), "entry must be an object");
}

TEST(SafetensorsTest, UnknownDtypeIsUnsupported) {
  for (const std::string dtype : {"F64", "I64", "U8", "BOOL", "f32", ""}) {
    ExpectError(test::SafetensorsBytes({RawTensor{"t", dtype, {1}, std::string(4, '\0')}}),
                "unsupported dtype");
  }
  ExpectError(OneTensor(R"({"dtype":5,"shape":[1],"data_offsets":[0,4]})", std::string(4, '\0')),
              "dtype");
  ExpectError(OneTensor(R"({"shape":[1],"data_offsets":[0,4]})", std::string(4, '\0')), "dtype");
}

TEST(SafetensorsTest, ShapeEntriesMustBeNonNegativeIntegers) {
  const std::string data(16, '\0');
  for (const std::string shape : {"[-1]", "[2,-2]", "[1.5]", "[\"2\"]", "[null]", "[[2]]"}) {
    ExpectError(OneTensor(R"({"dtype":"F32","shape":)" + shape + R"(,"data_offsets":[0,8]})", data),
                "non-negative integers");
  }
  ExpectError(OneTensor(R"({"dtype":"F32","shape":4,"data_offsets":[0,16]})", data), "shape");
  ExpectError(OneTensor(R"({"dtype":"F32","data_offsets":[0,16]})", data), "shape");
}

TEST(SafetensorsTest, AbsurdShapesAreRejected) {
  const std::string data(16, '\0');
  ExpectError(
      OneTensor(R"({"dtype":"F32","shape":[1,1,1,1,1,1,1,1,1],"data_offsets":[0,4]})", data),
      "rank");
  // numel overflowing 64 bits must not wrap around to a small byte count.
  ExpectError(OneTensor(R"({"dtype":"F32","shape":[4294967296,4294967296,1],)"
                        R"("data_offsets":[0,0]})",
                        data),
              "absurdly large");
}

TEST(SafetensorsTest, DataOffsetsOutOfRange) {
  const std::string data(16, '\0');
  ExpectError(OneTensor(R"({"dtype":"F32","shape":[5],"data_offsets":[0,20]})", data),
              "fall outside the data buffer");
  ExpectError(OneTensor(R"({"dtype":"F32","shape":[1],"data_offsets":[16,20]})", data),
              "fall outside the data buffer");
  ExpectError(
      OneTensor(R"({"dtype":"F32","shape":[1],"data_offsets":[18446744073709551612,0]})", data),
      "fall outside the data buffer");
}

TEST(SafetensorsTest, DataOffsetsBeginAfterEnd) {
  ExpectError(
      OneTensor(R"({"dtype":"F32","shape":[1],"data_offsets":[8,4]})", std::string(16, '\0')),
      "data_offsets [8, 4]");
}

TEST(SafetensorsTest, DataOffsetsMalformed) {
  const std::string data(16, '\0');
  for (const std::string offsets : {"[0]", "[0,4,8]", "[-4,0]", "[0,4.0]", "\"0,4\"", "[0,null]"}) {
    ExpectError(OneTensor(R"({"dtype":"F32","shape":[1],"data_offsets":)" + offsets + "}", data),
                "data_offsets");
  }
  ExpectError(OneTensor(R"({"dtype":"F32","shape":[1]})", data), "data_offsets");
}

TEST(SafetensorsTest, ByteSizeMustMatchShape) {
  ExpectError(test::SafetensorsBytes({RawTensor{"t", "F32", {2, 3}, std::string(20, '\0')}}),
              "needs 24");
  ExpectError(test::SafetensorsBytes({RawTensor{"t", "F32", {2, 3}, std::string(28, '\0')}}),
              "holds 28 bytes");
  ExpectError(test::SafetensorsBytes({RawTensor{"t", "F16", {3}, std::string(12, '\0')}}),
              "needs 6");
  ExpectError(test::SafetensorsBytes({RawTensor{"t", "BF16", {0}, std::string(2, '\0')}}),
              "needs 0");
}

// The message quotes the shape once: "shape [2,3]", not "shape [[2,3]]".
TEST(SafetensorsTest, ByteSizeMessageQuotesShapeOnce) {
  ExpectError(test::SafetensorsBytes({RawTensor{"t", "F32", {2, 3}, std::string(20, '\0')}}),
              "shape [2,3] of F32 needs 24");
}

TEST(SafetensorsTest, OverlappingTensorsAreRejected) {
  const std::string data(32, '\0');
  ExpectError(
      test::SafetensorsFromHeader(R"({"x":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
                                  R"("y":{"dtype":"F32","shape":[4],"data_offsets":[12,28]}})",
                                  data),
      "overlap");
  // Identical ranges, listed in the opposite order.
  ExpectError(
      test::SafetensorsFromHeader(R"({"y":{"dtype":"F32","shape":[2],"data_offsets":[8,16]},)"
                                  R"("x":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
                                  data),
      "overlap");
  // Touching ranges are fine.
  auto ok = Parse(
      test::SafetensorsFromHeader(R"({"x":{"dtype":"F32","shape":[4],"data_offsets":[16,32]},)"
                                  R"("y":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})",
                                  data));
  EXPECT_TRUE(ok.ok()) << ok.status();
}

// The tensors must tile the data buffer: no gap before, between or after them.
TEST(SafetensorsTest, TensorsMustCoverTheDataBufferExactly) {
  const std::string data(40, '\0');
  ExpectError(
      test::SafetensorsFromHeader(R"({"x":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
                                  R"("y":{"dtype":"F32","shape":[4],"data_offsets":[20,36]}})",
                                  data.substr(0, 36)),
      "4 bytes of the data buffer before tensor \"y\" (offset 16) belong to no tensor");
  ExpectError(OneTensor(R"({"dtype":"F32","shape":[4],"data_offsets":[4,20]})", data.substr(0, 20)),
              "4 bytes of the data buffer before tensor \"t\" (offset 0)");
  ExpectError(OneTensor(R"({"dtype":"F32","shape":[4],"data_offsets":[0,16]})", data.substr(0, 17)),
              "holds 17 bytes but the tensors cover 16");
  ExpectError(test::SafetensorsFromHeader("{}", "x"), "holds 1 bytes but the tensors cover 0");
}

// A header length one byte short (or long) of a file whose header ends in padding spaces, as
// real writers pad it: the JSON still parses and every tensor still fits, one byte off.
TEST(SafetensorsTest, HeaderLengthOffByOneIsRejected) {
  const std::string valid = test::SafetensorsBytes(SampleTensors());
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(valid[i]);
  const std::string padded =
      LengthPrefix(n + 8) + valid.substr(8, n) + std::string(8, ' ') + valid.substr(8 + n);
  ASSERT_TRUE(Parse(padded).ok()) << Parse(padded).status();
  std::string shorter = padded;
  shorter.replace(0, 8, LengthPrefix(n + 7));
  ExpectError(shorter, "but the tensors cover");
  std::string longer = padded;
  longer.replace(0, 8, LengthPrefix(n + 9));
  EXPECT_FALSE(Parse(longer).ok());
}

TEST(SafetensorsTest, DuplicateTensorNamesAreRejected) {
  ExpectError(
      test::SafetensorsFromHeader(R"({"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                                  R"("x":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                                  std::string(8, '\0')),
      "\"x\" appears twice");
}

TEST(SafetensorsTest, UnknownEntryFieldIsRejected) {
  ExpectError(OneTensor(R"({"dtype":"F32","shape":[1],"data_offsets":[0,4],"extra":1})",
                        std::string(4, '\0')),
              "unknown field \"extra\"");
}

TEST(SafetensorsTest, MetadataMustBeAnObjectOfStrings) {
  const std::string t = R"("t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]})";
  const std::string data(4, '\0');
  ExpectError(test::SafetensorsFromHeader(R"({"__metadata__":{"a":1},)" + t + "}", data),
              "__metadata__ values must be strings");
  ExpectError(test::SafetensorsFromHeader(R"({"__metadata__":{"a":{"b":"c"}},)" + t + "}", data),
              "__metadata__ values must be strings");
  ExpectError(test::SafetensorsFromHeader(R"({"__metadata__":{"a":null},)" + t + "}", data),
              "__metadata__ values must be strings");
  ExpectError(test::SafetensorsFromHeader(R"({"__metadata__":"x",)" + t + "}", data),
              "__metadata__ must be an object");
  auto ok = Parse(test::SafetensorsFromHeader(R"({"__metadata__":{},)" + t + "}", data));
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ((*ok)->tensors().size(), 1u);
  EXPECT_EQ((*ok)->Find("__metadata__"), nullptr);
}

// Every prefix of a valid file, written to disk and opened: an error for every proper prefix,
// OK for the whole file, never a crash or an out-of-bounds read (run under ASan).
TEST(SafetensorsTest, EveryTruncationIsRejectedWithoutCrashing) {
  const std::string bytes = test::SafetensorsBytes(SampleTensors(), {{"format", "pt"}});
  test::ScopedTempDir dir("st_trunc");
  const std::string path = dir.File("t.safetensors");
  for (size_t n = 0; n <= bytes.size(); ++n) {
    test::WriteFile(path, bytes.substr(0, n));
    auto file = SafetensorsFile::Open(path);
    if (n == bytes.size()) {
      ASSERT_TRUE(file.ok()) << file.status();
      EXPECT_EQ((*file)->tensors().size(), 6u);
    } else {
      ASSERT_FALSE(file.ok()) << "prefix of " << n << " bytes accepted";
      EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument) << n;
    }
  }
}

// The same for in-memory images, each in a buffer of exactly its length (ASan sees over-reads).
TEST(SafetensorsTest, EveryTruncatedBufferIsRejected) {
  const std::string bytes = test::SafetensorsBytes(SampleTensors());
  for (size_t n = 0; n < bytes.size(); ++n) {
    std::vector<unsigned char> exact(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(n));
    auto file = SafetensorsFile::FromBuffer(exact.data(), exact.size(), "prefix");
    ASSERT_FALSE(file.ok()) << "prefix of " << n << " bytes accepted";
  }
}

// Flipping any single byte of the header never crashes (the result may be valid or not).
TEST(SafetensorsTest, CorruptedHeaderBytesNeverCrash) {
  const std::string bytes = test::SafetensorsBytes(SampleTensors(), {{"format", "pt"}});
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i)
    header_len = (header_len << 8) | static_cast<unsigned char>(bytes[i]);
  for (size_t pos = 0; pos < 8 + header_len; ++pos) {
    for (unsigned char value : {0x00, 0x22, 0x39, 0x7d, 0xff}) {
      std::string corrupt = bytes;
      corrupt[pos] = static_cast<char>(value);
      std::vector<unsigned char> exact(corrupt.begin(), corrupt.end());
      auto file = SafetensorsFile::FromBuffer(exact.data(), exact.size(), "corrupt");
      if (file.ok()) {
        for (const SafetensorsTensor& t : (*file)->tensors()) {
          ASSERT_LE(t.data + t.size_bytes, exact.data() + exact.size());
          ASSERT_GE(t.data, exact.data() + 8);
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// LoadTransfoXlWeights

class WeightsTest : public ::testing::Test {
 protected:
  static ModelConfig Config() {
    ModelConfig c = test::SmallConfig();
    c.n_layer = 2;
    return c;
  }

  // Loads `tensors` as the weights of `config`.
  static absl::StatusOr<TransfoXlWeights> Load(const ModelConfig& config,
                                               const std::vector<RawTensor>& tensors,
                                               std::string* bytes_out) {
    *bytes_out = test::SafetensorsBytes(tensors);
    auto file = SafetensorsFile::FromBuffer(
        reinterpret_cast<const unsigned char*>(bytes_out->data()), bytes_out->size(), "w.st");
    if (!file.ok()) return file.status();
    return LoadTransfoXlWeights(config, **file);
  }

  // Both loaders (the copying one, and the mapped one that keeps matrices in their stored type)
  // refuse `tensors` with INVALID_ARGUMENT naming every substring.
  static void ExpectLoadError(const ModelConfig& config, const std::vector<RawTensor>& tensors,
                              const std::vector<std::string>& substrings) {
    std::string bytes;
    auto copied = Load(config, tensors, &bytes);
    auto file = SafetensorsFile::FromBuffer(reinterpret_cast<const unsigned char*>(bytes.data()),
                                            bytes.size(), "w.st");
    ASSERT_TRUE(file.ok()) << file.status();
    auto mapped =
        LoadTransfoXlWeights(config, std::shared_ptr<const SafetensorsFile>(std::move(*file)));
    for (const auto* w : {&copied, &mapped}) {
      ASSERT_FALSE(w->ok()) << (w == &copied ? "copying" : "mapped") << " loader accepted";
      EXPECT_EQ(w->status().code(), absl::StatusCode::kInvalidArgument);
      for (const std::string& s : substrings) {
        EXPECT_NE(std::string(w->status().message()).find(s), std::string::npos)
            << "message \"" << w->status().message() << "\" lacks \"" << s << "\"";
      }
    }
  }
};

TEST_F(WeightsTest, ValidWeightsLoadWithValues) {
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    for (bool untie : {true, false}) {
      for (bool tie : {false, true}) {
        ModelConfig c = Config();
        c.dtype = dtype;
        c.untie_r = untie;
        c.tie_word_embeddings = tie;
        const std::vector<RawTensor> tensors = test::RandomWeights(c, 11);
        std::string bytes;
        auto w = Load(c, tensors, &bytes);
        ASSERT_TRUE(w.ok()) << w.status();
        ASSERT_EQ(w->layers.size(), 2u);
        EXPECT_EQ(w->word_emb.shape(), (std::vector<int64_t>{c.vocab_size, c.d_model}));
        EXPECT_EQ(w->word_emb.dtype(), DType::kF32);
        EXPECT_EQ(w->layers[1].qkv.shape(), (std::vector<int64_t>{3 * c.attn_width(), c.d_model}));
        EXPECT_EQ(w->layers[0].dense.r_w_bias.shape(), (std::vector<int64_t>{c.n_head, c.d_head}));
        EXPECT_EQ(w->lm_head.shape(), (std::vector<int64_t>{c.vocab_size, c.d_model}));
        if (tie) {
          EXPECT_EQ(w->lm_head.raw(), w->word_emb.raw());
        }
        // Values: the first tensor converted to float32.
        std::vector<float> want(static_cast<size_t>(c.vocab_size * c.d_model));
        ConvertToFloat(dtype, tensors[0].bytes.data(), want.data(), want.size());
        ASSERT_EQ(std::memcmp(w->word_emb.raw(), want.data(), want.size() * 4), 0);
        // fc2 bias of the last layer, found by name.
        for (const RawTensor& t : tensors) {
          if (t.name != "layers.1.ff.fc2.bias") continue;
          std::vector<float> bias(static_cast<size_t>(c.d_model));
          ConvertToFloat(dtype, t.bytes.data(), bias.data(), bias.size());
          EXPECT_EQ(std::memcmp(w->layers[1].fc2_bias.raw(), bias.data(), bias.size() * 4), 0);
        }
      }
    }
  }
}

TEST_F(WeightsTest, MissingTensorIsNamed) {
  const ModelConfig c = Config();
  for (const std::string missing : {"word_emb.weight", "layers.1.attn.r_r_bias",
                                    "layers.0.ff.ln.bias", "lm_head.weight", "lm_head.bias"}) {
    std::vector<RawTensor> tensors = test::RandomWeights(c, 3);
    std::erase_if(tensors, [&](const RawTensor& t) { return t.name == missing; });
    ExpectLoadError(c, tensors, {"missing tensor \"" + missing + "\""});
  }
}

TEST_F(WeightsTest, ExtraTensorIsNamed) {
  const ModelConfig c = Config();
  std::vector<RawTensor> tensors = test::RandomWeights(c, 3);
  tensors.push_back(RawTensor{"layers.2.attn.o.weight", "F32", {1}, F32({0.0f})});
  ExpectLoadError(c, tensors, {"unexpected", "layers.2.attn.o.weight"});

  // lm_head.weight is extra when the embeddings are tied.
  ModelConfig tied = c;
  tied.tie_word_embeddings = true;
  std::vector<RawTensor> untied_tensors = test::RandomWeights(c, 3);
  ExpectLoadError(tied, untied_tensors, {"unexpected", "lm_head.weight"});

  // Per-layer r biases are extra when they are shared (and the shared pair is missing).
  ModelConfig shared = c;
  shared.untie_r = false;
  std::vector<RawTensor> with_shared = test::RandomWeights(shared, 3);
  for (const RawTensor& t : test::RandomWeights(c, 3)) {
    if (t.name == "layers.0.attn.r_w_bias") with_shared.push_back(t);
  }
  ExpectLoadError(shared, with_shared, {"unexpected", "layers.0.attn.r_w_bias"});
}

TEST_F(WeightsTest, WrongShapeIsNamed) {
  const ModelConfig c = Config();
  std::vector<RawTensor> tensors = test::RandomWeights(c, 3);
  for (RawTensor& t : tensors) {
    if (t.name == "layers.1.attn.o.weight") {
      t.shape = {c.attn_width(), c.d_model};  // transposed
    }
  }
  ExpectLoadError(c, tensors, {"\"layers.1.attn.o.weight\"", "has shape [12, 16]", "[16, 12]"});
}

// A NaN or infinite weight is refused at load, naming the tensor, in every storage dtype.
TEST_F(WeightsTest, NonFiniteWeightIsNamed) {
  const float bad[] = {std::numeric_limits<float>::quiet_NaN(),
                       std::numeric_limits<float>::infinity(),
                       -std::numeric_limits<float>::infinity()};
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    for (float value : bad) {
      ModelConfig c = Config();
      c.dtype = dtype;
      std::vector<RawTensor> tensors = test::RandomWeights(c, 3);
      for (RawTensor& t : tensors) {
        if (t.name != "layers.1.ff.fc1.weight") continue;
        const std::string one = test::FloatBytes({value}, dtype);
        t.bytes.replace(3 * one.size(), one.size(), one);  // element 3
      }
      ExpectLoadError(c, tensors,
                      {"\"layers.1.ff.fc1.weight\"", "non-finite value", "at element 3"});
    }
    // Far into a large tensor (the scan goes by blocks of 4096 elements).
    ModelConfig c = Config();
    c.dtype = dtype;
    c.vocab_size = 700;  // word_emb: 11,200 elements
    std::vector<RawTensor> tensors = test::RandomWeights(c, 4);
    for (RawTensor& t : tensors) {
      if (t.name != "word_emb.weight") continue;
      const std::string one = test::FloatBytes({bad[1]}, dtype);
      t.bytes.replace(9001 * one.size(), one.size(), one);
    }
    ExpectLoadError(c, tensors, {"\"word_emb.weight\"", "non-finite value", "at element 9001"});
  }
}

TEST_F(WeightsTest, DtypeMismatchIsNamed) {
  ModelConfig c = Config();
  c.dtype = DType::kF16;
  std::vector<RawTensor> tensors = test::RandomWeights(c, 3);
  for (RawTensor& t : tensors) {
    if (t.name == "layers.0.ff.fc1.bias") {
      t.dtype = "BF16";  // same byte size, other dtype
    }
  }
  ExpectLoadError(c, tensors, {"\"layers.0.ff.fc1.bias\"", "bfloat16", "float16"});
  // A whole float32 file under a float16 config.
  ModelConfig f32 = Config();
  ExpectLoadError(c, test::RandomWeights(f32, 3), {"float32", "torch_dtype"});
}

TEST_F(WeightsTest, RandomConfigsLoad) {
  for (uint32_t seed = 0; seed < 20; ++seed) {
    const ModelConfig c = test::RandomConfig(seed);
    std::string bytes;
    auto w = Load(c, test::RandomWeights(c, seed), &bytes);
    ASSERT_TRUE(w.ok()) << "seed " << seed << ": " << w.status();
    EXPECT_EQ(static_cast<int64_t>(w->layers.size()), c.n_layer);
  }
}

}  // namespace
}  // namespace mnemo::engine

namespace mnemo::engine {
namespace {

// Loading from a file the weights keep alive: aligned weight matrices and embeddings alias the
// read-only mapping in their stored type (no copy, a 16-bit checkpoint's stay 16-bit) and hold the
// copying loader's values; biases and LayerNorms are float32 either way.
TEST(WeightsInPlaceTest, AlignedMatricesAliasTheMappingInTheirType) {
  for (DType dtype : {DType::kF32, DType::kBF16, DType::kF16}) {
    ModelConfig c = test::SmallConfig();
    c.dtype = dtype;
    const std::string bytes = test::SafetensorsBytes(test::RandomWeights(c, 5));
    test::ScopedTempDir dir("inplace");
    test::WriteFile(dir.File("w.safetensors"), bytes);
    auto opened = SafetensorsFile::Open(dir.File("w.safetensors"));
    ASSERT_TRUE(opened.ok()) << opened.status();
    std::shared_ptr<const SafetensorsFile> file(std::move(*opened));
    auto copied = LoadTransfoXlWeights(c, *file);
    ASSERT_TRUE(copied.ok()) << copied.status();
    const SafetensorsTensor* raw = file->Find("word_emb.weight");
    ASSERT_NE(raw, nullptr);
    auto in_place = LoadTransfoXlWeights(c, file);
    ASSERT_TRUE(in_place.ok()) << in_place.status();
    EXPECT_EQ(in_place->word_emb.raw(), static_cast<const void*>(raw->data)) << DTypeName(dtype);
    EXPECT_EQ(in_place->word_emb.dtype(), dtype);
    EXPECT_EQ(in_place->layers[0].fc2.dtype(), dtype);
    EXPECT_EQ(in_place->layers[0].fc2_bias.dtype(), DType::kF32);
    EXPECT_EQ(copied->word_emb.dtype(), DType::kF32);
    // The same values: the in-place tensors widened equal the copying loader's.
    const TransfoXlWeights widened = WeightsAs(*in_place, WeightSet::kMatrices, DType::kF32);
    for (const auto& [a, b] : {std::pair{&widened.word_emb, &copied->word_emb},
                               {&widened.layers[0].fc2, &copied->layers[0].fc2},
                               {&in_place->layers[0].fc2_bias, &copied->layers[0].fc2_bias}}) {
      ASSERT_EQ(a->dtype(), DType::kF32);
      EXPECT_EQ(std::memcmp(a->raw(), b->raw(), b->bytes()), 0) << DTypeName(dtype);
    }
    // The tensors keep the mapping alive after every other owner is gone.
    const float first = widened.word_emb.data<float>()[0];
    file.reset();
    EXPECT_EQ(WeightsAs(*in_place, WeightSet::kMatrices, DType::kF32).word_emb.data<float>()[0],
              first);
  }
}

// WeightsAs converts one set and shares the rest; tensors sharing a buffer (a tied output
// layer, ALBERT groups) still share one after; narrowing a 16-bit checkpoint's values is exact.
TEST(WeightsAsTest, ConvertsOneSetAndKeepsSharing) {
  ModelConfig c = test::SmallConfig();
  c.dtype = DType::kBF16;
  c.tie_word_embeddings = true;
  const std::string bytes = test::SafetensorsBytes(test::RandomWeights(c, 6));
  test::ScopedTempDir dir("weights-as");
  test::WriteFile(dir.File("w.safetensors"), bytes);
  auto file = SafetensorsFile::Open(dir.File("w.safetensors"));
  ASSERT_TRUE(file.ok()) << file.status();
  auto loaded = LoadTransfoXlWeights(c, **file);  // widened copies
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  const TransfoXlWeights narrow = WeightsAs(*loaded, WeightSet::kMatrices, DType::kBF16);
  EXPECT_EQ(narrow.word_emb.dtype(), DType::kBF16);
  EXPECT_EQ(narrow.word_emb.raw(), narrow.lm_head.raw());
  EXPECT_EQ(narrow.layers[0].qkv.dtype(), DType::kBF16);
  EXPECT_EQ(narrow.layers[0].fc1_bias.raw(), loaded->layers[0].fc1_bias.raw());  // shared
  const TransfoXlWeights back = WeightsAs(narrow, WeightSet::kMatrices, DType::kF32);
  EXPECT_EQ(std::memcmp(back.layers[0].qkv.raw(), loaded->layers[0].qkv.raw(),
                        loaded->layers[0].qkv.bytes()),
            0);
  EXPECT_EQ(back.word_emb.raw(), back.lm_head.raw());
  // Already of that type: nothing is copied.
  EXPECT_EQ(WeightsAs(narrow, WeightSet::kMatrices, DType::kBF16).layers[0].qkv.raw(),
            narrow.layers[0].qkv.raw());
}

}  // namespace
}  // namespace mnemo::engine
