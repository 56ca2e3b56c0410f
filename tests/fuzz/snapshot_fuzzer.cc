// The session snapshot reader (engine/api/snapshot: ReadSnapshotManifest, ReadSnapshot) on
// arbitrary bytes, for a tiny model holding every layer kind (fuzz_model.h). Checksums would
// stop almost every mutation at the first check, so inputs whose first byte is odd are
// "repaired" first: the manifest checksum in the header and each section's xxh3 in the manifest
// are recomputed in place (same length), which lets mutated manifests and state bytes reach the
// per-layer validation (shapes, ring bookkeeping, index-like contents). A snapshot the reader
// accepts must then be usable: one forward step runs on it, and it writes back and reads again.
//
// MNEMO_FUZZ_WRITE_SEEDS=DIR writes valid snapshots of this model (fresh, and after a few steps
// of every kind) into DIR and exits: the committed seed corpus comes from there.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <string_view>
#include <vector>

#include "engine/api/model.h"
#include "engine/api/snapshot.h"
#include "nlohmann/json.hpp"
#include "tests/fuzz/fuzz_model.h"
#include "xxhash.h"

namespace {

using namespace mnemo::engine::api;  // NOLINT: the engine's API is what this target drives

struct Fixture {
  std::unique_ptr<Model> model;
  SnapshotIdentity identity;
};

void Die(const char* what, const absl::Status& status) {
  std::fprintf(stderr, "snapshot_fuzzer: %s: %s\n", what, status.ToString().c_str());
  std::abort();
}

const Fixture& GetFixture() {
  static const Fixture* fixture = [] {
    auto* f = new Fixture;
    auto model = Model::Load(mnemo::fuzz::TinyCheckpointDir());
    if (!model.ok()) Die("loading the tiny model", model.status());
    f->model = std::move(*model);
    auto identity = IdentityOf(*f->model);
    if (!identity.ok()) Die("fingerprinting the tiny model", identity.status());
    f->identity = *identity;
    return f;
  }();
  return *fixture;
}

void PutLe64(std::string& s, size_t offset, uint64_t v) {
  for (int i = 0; i < 8; ++i) s[offset + i] = static_cast<char>((v >> (8 * i)) & 0xff);
}
uint64_t GetLe64(std::string_view s, size_t offset) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= uint64_t{static_cast<unsigned char>(s[offset + i])} << (8 * i);
  return v;
}

// Recomputes the section checksums and the manifest checksum in place (see the file comment).
void Repair(std::string& bytes) {
  if (bytes.size() < kSnapshotHeaderBytes) return;
  const uint64_t manifest_len = GetLe64(bytes, 16);
  if (manifest_len == 0 || manifest_len > bytes.size() - kSnapshotHeaderBytes) return;
  const size_t begin = kSnapshotHeaderBytes;
  const size_t data_offset = (begin + manifest_len + 63) / 64 * 64;
  const std::string_view text(bytes.data() + begin, manifest_len);
  const nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_object() && j.contains("sections") && j.at("sections").is_array()) {
    size_t search = begin;
    for (const nlohmann::json& s : j.at("sections")) {
      const std::string key = "\"xxh3\":\"";
      const size_t at = bytes.find(key, search);
      if (at == std::string::npos || at + key.size() + 16 > begin + manifest_len) break;
      search = at + key.size() + 16;
      if (!s.is_object() || !s.contains("offset") || !s.contains("bytes") ||
          !s.at("offset").is_number_unsigned() || !s.at("bytes").is_number_unsigned()) {
        continue;
      }
      const uint64_t offset = s.at("offset").get<uint64_t>(), size = s.at("bytes").get<uint64_t>();
      if (data_offset > bytes.size() || offset > bytes.size() - data_offset ||
          size > bytes.size() - data_offset - offset) {
        continue;
      }
      char hex[17];
      std::snprintf(
          hex, sizeof(hex), "%016llx",
          static_cast<unsigned long long>(XXH3_64bits(bytes.data() + data_offset + offset, size)));
      bytes.replace(at + key.size(), 16, hex, 16);
    }
  }
  PutLe64(bytes, 24, XXH3_64bits(bytes.data() + begin, manifest_len));
}

void WriteSeeds(const char* dir) {
  const Fixture& f = GetFixture();
  const Model& model = *f.model;
  auto state = model.NewState();
  if (!state.ok()) Die("NewState", state.status());
  SnapshotSession session;
  session.id = "0123456789abcdef0123456789abcdef";
  session.model_name = "tiny";
  session.labels = {{"book", "genesis"}};
  auto write = [&](const std::string& name) {
    auto bytes = WriteSnapshot(model, f.identity, *state, nullptr, session);
    if (!bytes.ok()) Die("WriteSnapshot", bytes.status());
    // Byte 0 of an input: 1 repairs the checksums after a mutation, 0 reads the bytes as they are.
    std::ofstream(std::string(dir) + "/" + name, std::ios::binary) << '\x01' << *bytes;
    std::ofstream(std::string(dir) + "/" + name + "_raw", std::ios::binary) << '\x00' << *bytes;
  };
  write("fresh");
  std::vector<int32_t> tokens(29);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<int32_t>((i * 7 + 3) % 37);
  size_t pos = 0;
  for (const int64_t n : {5, 1, 9, 1, 13}) {
    const absl::Status s =
        model.Forward({SequenceInput{tokens.data() + pos, n, &*state}}, LogitsMode::kNone, nullptr);
    if (!s.ok()) Die("Forward", s);
    pos += static_cast<size_t>(n);
    session.state_version += 1;
    session.tokens_seen = static_cast<int64_t>(pos);
    write("after_" + std::to_string(pos));
  }
  session.pending = {1, 2, 3};
  SamplingParams sampling;
  sampling.temperature = 0.5f;
  sampling.top_k = 4;
  session.default_sampling = sampling;
  session.durability = Durability::kSync;
  write("with_pending_and_sampling");
  std::exit(0);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  if (const char* dir = std::getenv("MNEMO_FUZZ_WRITE_SEEDS")) WriteSeeds(dir);
  GetFixture();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const Fixture& f = GetFixture();
  std::string bytes(reinterpret_cast<const char*>(data) + 1, size - 1);
  if (data[0] & 1) Repair(bytes);

  if (auto prefix = SnapshotManifestPrefixBytes(bytes); prefix.ok()) {
    if (*prefix < static_cast<int64_t>(kSnapshotHeaderBytes)) std::abort();
  }
  auto manifest = ReadSnapshotManifest(bytes);
  auto restored = ReadSnapshot(*f.model, f.identity, bytes);
  if (!restored.ok()) {
    const absl::StatusCode code = restored.status().code();
    if (code != absl::StatusCode::kInvalidArgument &&
        code != absl::StatusCode::kFailedPrecondition && code != absl::StatusCode::kDataLoss) {
      Die("ReadSnapshot answered with an unexpected code", restored.status());
    }
    return 0;
  }
  if (!manifest.ok()) Die("a snapshot that reads has a manifest that does not", manifest.status());

  // Accepted: it must run, and write back to a snapshot that reads again.
  auto again =
      WriteSnapshot(*f.model, f.identity, restored->state, nullptr, restored->manifest.session);
  if (!again.ok()) Die("writing a restored state back", again.status());
  auto reread = ReadSnapshot(*f.model, f.identity, *again);
  if (!reread.ok()) Die("reading a rewritten snapshot", reread.status());
  const int32_t token = static_cast<int32_t>(size % f.model->config().vocab_size);
  mnemo::engine::api::Tensor logits;
  const absl::Status step =
      f.model->Forward({SequenceInput{&token, 1, &restored->state}}, LogitsMode::kLast, &logits);
  if (!step.ok() && step.code() != absl::StatusCode::kOutOfRange) {
    Die("one step on a restored state", step);
  }
  return 0;
}
