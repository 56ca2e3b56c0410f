// Session snapshots (snapshot.h, docs/session-snapshots.md): a 32-byte header, a JSON manifest,
// then one section per layer state (the model's layers, then the draft's), each holding the
// layer's tensors in the order LayerState::Map visits them, 64-byte aligned, XXH3-checksummed.
// Reading checks the whole file against the manifest and the manifest against the model before
// it builds a state.
#include "engine/api/snapshot.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>
#include <span>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

#include "base/status_macros.h"
#include "engine/api/model_access.h"
#include "nlohmann/json.hpp"
#include "xxhash.h"

namespace mnemo::engine::api {
namespace {

using Json = nlohmann::json;

// How the layer kinds lay out their tensors and bookkeeping (LayerState::Map order,
// LayerState::Bookkeeping): bumped when a kind changes either.
constexpr int64_t kStateLayoutVersion = 1;
// Tensor payloads and sections start at multiples of this (from the start of the snapshot).
constexpr int64_t kAlignment = 64;
// The manifest is at most this deeply nested (objects and arrays); deeper input is refused before
// it is parsed.
constexpr int kMaxManifestDepth = 8;
// Positions beyond this are refused (no arithmetic on a restored position can overflow).
constexpr int64_t kMaxPosition = int64_t{1} << 53;

constexpr size_t kMagicOffset = 0, kVersionOffset = 8, kFlagsOffset = 12, kManifestLenOffset = 16,
                 kManifestHashOffset = 24;
static_assert(kManifestHashOffset + 8 == kSnapshotHeaderBytes);

absl::Status Invalid(absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("snapshot: ", what));
}

int64_t AlignUp(int64_t n) { return (n + kAlignment - 1) / kAlignment * kAlignment; }

void PutLe(std::string& out, size_t offset, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out[offset + i] = static_cast<char>((v >> (8 * i)) & 0xff);
}

uint64_t GetLe(std::string_view in, size_t offset, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) {
    v |= static_cast<uint64_t>(static_cast<unsigned char>(in[offset + i])) << (8 * i);
  }
  return v;
}

uint64_t Xxh3(std::string_view bytes) { return XXH3_64bits(bytes.data(), bytes.size()); }
std::string Hex(uint64_t v) { return absl::StrFormat("%016x", v); }

// Deepest nesting of objects and arrays in `text` (strings skipped), stopping past `limit`.
int JsonDepth(std::string_view text, int limit) {
  int depth = 0, deepest = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size() && deepest <= limit; ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') {
        ++i;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      deepest = std::max(deepest, ++depth);
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return deepest;
}

// Typed access to a manifest object; errors name the field by its path.
class Fields {
 public:
  Fields(const Json& j, std::string path) : j_(j), path_(std::move(path)) {}

  absl::Status Error(absl::string_view field, absl::string_view what) const {
    const absl::string_view dot = path_.empty() || field.empty() ? "" : ".";
    return Invalid(absl::StrCat("manifest ", path_, dot, field, ": ", what));
  }
  absl::StatusOr<const Json*> Get(absl::string_view field) const {
    const auto it = j_.find(std::string(field));
    if (it == j_.end()) return Error(field, "missing");
    return &*it;
  }
  absl::StatusOr<int64_t> Int(absl::string_view field, int64_t lo, int64_t hi) const {
    ASSIGN_OR_RETURN(const Json* v, Get(field));
    return IntValue(*v, field, lo, hi);
  }
  absl::StatusOr<int64_t> IntValue(const Json& v, absl::string_view field, int64_t lo,
                                   int64_t hi) const {
    const bool fits =
        v.is_number_integer() &&
        (!v.is_number_unsigned() ||
         v.get<uint64_t>() <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()));
    if (!fits || v.get<int64_t>() < lo || v.get<int64_t>() > hi) {
      return Error(field, absl::StrCat("must be an integer in [", lo, ", ", hi, "]"));
    }
    return v.get<int64_t>();
  }
  absl::StatusOr<std::string> String(absl::string_view field) const {
    ASSIGN_OR_RETURN(const Json* v, Get(field));
    if (!v->is_string()) return Error(field, "must be a string");
    return v->get<std::string>();
  }
  absl::StatusOr<const Json*> Array(absl::string_view field) const {
    ASSIGN_OR_RETURN(const Json* v, Get(field));
    if (!v->is_array()) return Error(field, "must be an array");
    return v;
  }
  absl::StatusOr<const Json*> Object(absl::string_view field) const {
    ASSIGN_OR_RETURN(const Json* v, Get(field));
    if (!v->is_object()) return Error(field, "must be an object");
    return v;
  }
  absl::StatusOr<float> Float(absl::string_view field) const {
    ASSIGN_OR_RETURN(const Json* v, Get(field));
    if (!v->is_number()) return Error(field, "must be a number");
    const double d = v->get<double>();
    if (!(std::abs(d) <= std::numeric_limits<float>::max())) {
      return Error(field, "must be a finite float32");
    }
    return static_cast<float>(d);
  }
  const std::string& path() const { return path_; }

 private:
  const Json& j_;
  std::string path_;
};

// One section as the manifest lists it: offsets from the start of the data area.
struct Section {
  int64_t offset = 0;
  int64_t bytes = 0;
  uint64_t xxh3 = 0;
};

// One tensor of a layer's section as the manifest lists it.
struct TensorEntry {
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  int64_t offset = 0;  // within the section
  int64_t bytes = 0;
};

struct LayerEntry {
  std::string attention;
  int64_t bytes = 0;
  int64_t section = 0;
  std::vector<int64_t> bookkeeping;
  std::vector<TensorEntry> tensors;
};

struct StateEntry {
  std::string fingerprint;
  std::string dtype;
  std::string session_memory = "float32";  // absent in snapshots from before 16-bit memory
  int64_t n_layer = 0;
  int64_t position = 0;
  std::vector<LayerEntry> layers;
};

// The whole manifest, parsed and checked for structure (not yet against a model).
struct ParsedManifest {
  SnapshotManifest manifest;
  int64_t state_layout = 0;
  int64_t data_offset = 0;  // where the data area (the sections) starts
  std::vector<Section> sections;
  std::vector<StateEntry> states;  // the model's, then the draft's
};

// ---- Writing ----------------------------------------------------------------------------------

Json SessionJson(const SnapshotSession& s) {
  Json j = Json::object();
  j["id"] = s.id;
  j["model_name"] = s.model_name;
  j["state_version"] = s.state_version;
  j["tokens_seen"] = s.tokens_seen;
  j["pending"] = s.pending;
  j["labels"] = s.labels;
  j["ttl_ms"] = s.ttl_ms;
  j["create_time_unix_ms"] = s.create_time_unix_ms;
  j["last_use_unix_ms"] = s.last_use_unix_ms;
  if (s.default_sampling) {
    const SamplingParams& p = *s.default_sampling;
    j["default_sampling"] = {{"temperature", p.temperature},
                             {"top_k", p.top_k},
                             {"top_p", p.top_p},
                             {"repetition_penalty", p.repetition_penalty},
                             {"seed", p.seed},
                             {"top_logprobs", p.top_logprobs}};
  } else {
    j["default_sampling"] = nullptr;
  }
  j["durability"] = EnumName(s.durability);
  if (!s.tenant.empty()) j["tenant"] = s.tenant;
  return j;
}

// A host copy of one state's layers: per layer its tensors (Map order) and bookkeeping.
struct HostLayer {
  std::vector<Tensor> tensors;
  std::vector<int64_t> bookkeeping;
};

absl::StatusOr<std::vector<HostLayer>> HostLayers(const TransfoXlModel& impl,
                                                  const SessionState& state) {
  if (!impl.StateFits(state)) {
    return absl::InvalidArgumentError("snapshot: the session state was not made by this model");
  }
  // A host state (the CPU backend's, or one demoted to host memory) is read in place.
  SessionState copied;
  if (state.device() != Device::kCpu) {
    ASSIGN_OR_RETURN(copied, impl.StateToHost(state));
  }
  const SessionState& host = state.device() == Device::kCpu ? state : copied;
  std::vector<HostLayer> out;
  for (const auto& layer : host.layers()) {
    HostLayer h;
    h.bookkeeping = layer->Bookkeeping();
    RETURN_IF_ERROR(layer
                        ->Map([&](const Tensor& t) -> absl::StatusOr<Tensor> {
                          h.tensors.push_back(t);
                          return t;
                        })
                        .status());
    out.push_back(std::move(h));
  }
  return out;
}

absl::Status CheckPending(const std::vector<int32_t>& pending, int64_t vocab) {
  for (size_t i = 0; i < pending.size(); ++i) {
    if (pending[i] < 0 || pending[i] >= vocab) {
      return Invalid(absl::StrCat("pending token ", i, ": id ", pending[i],
                                  " outside vocabulary [0, ", vocab, ")"));
    }
  }
  return absl::OkStatus();
}

// ---- Reading the manifest --------------------------------------------------------------------

absl::StatusOr<SnapshotSession> ParseSession(const Json& j) {
  const Fields f(j, "session");
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  SnapshotSession s;
  ASSIGN_OR_RETURN(s.id, f.String("id"));
  ASSIGN_OR_RETURN(s.model_name, f.String("model_name"));
  ASSIGN_OR_RETURN(s.state_version, f.Int("state_version", 0, kMax));
  ASSIGN_OR_RETURN(s.tokens_seen, f.Int("tokens_seen", 0, kMax));
  ASSIGN_OR_RETURN(const Json* pending, f.Array("pending"));
  s.pending.reserve(pending->size());
  for (const Json& id : *pending) {
    ASSIGN_OR_RETURN(const int64_t v,
                     f.IntValue(id, "pending[]", 0, std::numeric_limits<int32_t>::max()));
    s.pending.push_back(static_cast<int32_t>(v));
  }
  ASSIGN_OR_RETURN(const Json* labels, f.Object("labels"));
  for (const auto& [key, value] : labels->items()) {
    if (!value.is_string()) return f.Error("labels", "values must be strings");
    s.labels[key] = value.get<std::string>();
  }
  ASSIGN_OR_RETURN(s.ttl_ms, f.Int("ttl_ms", 0, kMax));
  ASSIGN_OR_RETURN(s.create_time_unix_ms, f.Int("create_time_unix_ms", 0, kMax));
  ASSIGN_OR_RETURN(s.last_use_unix_ms, f.Int("last_use_unix_ms", 0, kMax));
  ASSIGN_OR_RETURN(const Json* sampling, f.Get("default_sampling"));
  if (!sampling->is_null()) {
    if (!sampling->is_object()) return f.Error("default_sampling", "must be an object or null");
    const Fields p(*sampling, "session.default_sampling");
    SamplingParams params;
    ASSIGN_OR_RETURN(params.temperature, p.Float("temperature"));
    ASSIGN_OR_RETURN(const int64_t top_k, p.Int("top_k", 0, std::numeric_limits<int32_t>::max()));
    params.top_k = static_cast<int32_t>(top_k);
    ASSIGN_OR_RETURN(params.top_p, p.Float("top_p"));
    ASSIGN_OR_RETURN(params.repetition_penalty, p.Float("repetition_penalty"));
    ASSIGN_OR_RETURN(const Json* seed, p.Get("seed"));
    if (!seed->is_number_unsigned() && !(seed->is_number_integer() && seed->get<int64_t>() >= 0)) {
      return p.Error("seed", "must be an integer in [0, 2^64)");
    }
    params.seed = seed->get<uint64_t>();
    ASSIGN_OR_RETURN(const int64_t top_logprobs,
                     p.Int("top_logprobs", 0, std::numeric_limits<int32_t>::max()));
    params.top_logprobs = static_cast<int32_t>(top_logprobs);
    const absl::Status valid = ValidateSamplingParams(params);
    if (!valid.ok()) return f.Error("default_sampling", valid.message());
    s.default_sampling = params;
  }
  ASSIGN_OR_RETURN(const std::string durability, f.String("durability"));
  const std::optional<Durability> level = ParseEnum<Durability>(durability);
  if (!level) return f.Error("durability", "must be \"none\", \"async\" or \"sync\"");
  s.durability = *level;
  if (j.contains("tenant")) {
    ASSIGN_OR_RETURN(s.tenant, f.String("tenant"));
  }
  return s;
}

absl::StatusOr<std::vector<Section>> ParseSections(const Json& list) {
  std::vector<Section> out;
  int64_t end = 0;  // of the previous section
  for (size_t i = 0; i < list.size(); ++i) {
    if (!list[i].is_object())
      return Invalid(absl::StrCat("manifest sections[", i, "]: not an object"));
    const Fields f(list[i], absl::StrCat("sections[", i, "]"));
    Section s;
    ASSIGN_OR_RETURN(s.offset, f.Int("offset", 0, kMaxPosition));
    ASSIGN_OR_RETURN(s.bytes, f.Int("bytes", 0, kMaxPosition));
    ASSIGN_OR_RETURN(const std::string hash, f.String("xxh3"));
    if (s.offset % kAlignment != 0) {
      return f.Error("offset", absl::StrCat(s.offset, " is not a multiple of ", kAlignment));
    }
    if (s.offset < end) {
      return f.Error("offset",
                     absl::StrCat(s.offset, " overlaps the previous section (ends at ", end, ")"));
    }
    if (hash.size() != 16 || hash.find_first_not_of("0123456789abcdef") != std::string::npos) {
      return f.Error("xxh3", "must be 16 lowercase hex digits");
    }
    for (const char h : hash)
      s.xxh3 = s.xxh3 << 4 | static_cast<uint64_t>(h <= '9' ? h - '0' : h - 'a' + 10);
    end = s.offset + s.bytes;  // both ≤ 2^53: no overflow
    out.push_back(s);
  }
  return out;
}

absl::StatusOr<StateEntry> ParseState(const Json& j, const std::string& path, size_t n_sections) {
  const Fields f(j, path);
  StateEntry s;
  ASSIGN_OR_RETURN(s.fingerprint, f.String("fingerprint"));
  ASSIGN_OR_RETURN(s.dtype, f.String("dtype"));
  if (j.contains("session_memory")) {
    ASSIGN_OR_RETURN(s.session_memory, f.String("session_memory"));
  }
  ASSIGN_OR_RETURN(s.n_layer, f.Int("n_layer", 1, static_cast<int64_t>(n_sections)));
  ASSIGN_OR_RETURN(s.position, f.Int("position", 0, kMaxPosition));
  ASSIGN_OR_RETURN(const Json* layers, f.Array("layers"));
  if (static_cast<int64_t>(layers->size()) != s.n_layer) {
    return f.Error("layers", absl::StrCat(layers->size(), " entries for n_layer ", s.n_layer));
  }
  for (size_t l = 0; l < layers->size(); ++l) {
    const Json& lj = (*layers)[l];
    const std::string lpath = absl::StrCat(path, ".layers[", l, "]");
    if (!lj.is_object()) return Invalid(absl::StrCat("manifest ", lpath, ": not an object"));
    const Fields lf(lj, lpath);
    LayerEntry e;
    ASSIGN_OR_RETURN(e.attention, lf.String("attention"));
    ASSIGN_OR_RETURN(e.bytes, lf.Int("bytes", 0, kMaxPosition));
    ASSIGN_OR_RETURN(e.section, lf.Int("section", 0, static_cast<int64_t>(n_sections) - 1));
    ASSIGN_OR_RETURN(const Json* bookkeeping, lf.Array("bookkeeping"));
    for (const Json& v : *bookkeeping) {
      ASSIGN_OR_RETURN(const int64_t x, lf.IntValue(v, "bookkeeping[]", -1, kMaxPosition));
      e.bookkeeping.push_back(x);
    }
    ASSIGN_OR_RETURN(const Json* tensors, lf.Array("tensors"));
    for (size_t k = 0; k < tensors->size(); ++k) {
      const Json& tj = (*tensors)[k];
      const std::string tpath = absl::StrCat(lpath, ".tensors[", k, "]");
      if (!tj.is_object()) return Invalid(absl::StrCat("manifest ", tpath, ": not an object"));
      const Fields tf(tj, tpath);
      TensorEntry t;
      ASSIGN_OR_RETURN(const std::string dtype, tf.String("dtype"));
      const absl::StatusOr<DType> parsed = ParseDTypeName(dtype);
      if (!parsed.ok()) return tf.Error("dtype", absl::StrCat("unknown dtype \"", dtype, "\""));
      t.dtype = *parsed;
      ASSIGN_OR_RETURN(const Json* shape, tf.Array("shape"));
      for (const Json& d : *shape) {
        ASSIGN_OR_RETURN(const int64_t x, tf.IntValue(d, "shape[]", 0, kMaxPosition));
        t.shape.push_back(x);
      }
      ASSIGN_OR_RETURN(t.offset, tf.Int("offset", 0, kMaxPosition));
      ASSIGN_OR_RETURN(t.bytes, tf.Int("bytes", 0, kMaxPosition));
      e.tensors.push_back(std::move(t));
    }
    s.layers.push_back(std::move(e));
  }
  return s;
}

// The manifest length from a header: at least 32 bytes, the magic, a length in [1, 1 MiB].
absl::StatusOr<uint64_t> ManifestBytes(std::string_view header) {
  if (header.size() < kSnapshotHeaderBytes) {
    return Invalid(
        absl::StrCat("truncated header: ", header.size(), " of ", kSnapshotHeaderBytes, " bytes"));
  }
  if (header.substr(kMagicOffset, kSnapshotMagic.size()) != kSnapshotMagic) {
    return Invalid("not a session snapshot (bad magic)");
  }
  const uint64_t manifest_bytes = GetLe(header, kManifestLenOffset, 8);
  if (manifest_bytes == 0 || manifest_bytes > static_cast<uint64_t>(kMaxSnapshotManifestBytes)) {
    return Invalid(absl::StrCat("manifest length ", manifest_bytes, " outside [1, ",
                                kMaxSnapshotManifestBytes, "]"));
  }
  return manifest_bytes;
}

absl::StatusOr<ParsedManifest> ParseManifest(std::string_view prefix) {
  ASSIGN_OR_RETURN(const uint64_t manifest_bytes, ManifestBytes(prefix));
  const auto version = static_cast<uint32_t>(GetLe(prefix, kVersionOffset, 4));
  if (version != kSnapshotFormatVersion) {
    return absl::FailedPreconditionError(absl::StrCat("snapshot: format version ", version,
                                                      "; this build reads version ",
                                                      kSnapshotFormatVersion));
  }
  const auto flags = static_cast<uint32_t>(GetLe(prefix, kFlagsOffset, 4));
  if (flags != 0) return Invalid(absl::StrCat("unknown header flags 0x", absl::Hex(flags)));
  if (prefix.size() - kSnapshotHeaderBytes < manifest_bytes) {
    return Invalid(absl::StrCat("truncated manifest: ", prefix.size() - kSnapshotHeaderBytes,
                                " of ", manifest_bytes, " bytes"));
  }
  const std::string_view text = prefix.substr(kSnapshotHeaderBytes, manifest_bytes);
  const uint64_t want = GetLe(prefix, kManifestHashOffset, 8);
  if (Xxh3(text) != want) {
    return absl::DataLossError(
        absl::StrCat("snapshot: manifest checksum ", Hex(Xxh3(text)), " != recorded ", Hex(want)));
  }
  if (JsonDepth(text, kMaxManifestDepth) > kMaxManifestDepth) {
    return Invalid(absl::StrCat("manifest nested deeper than ", kMaxManifestDepth));
  }
  const Json j = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return Invalid("manifest is not a JSON object");

  ParsedManifest out;
  const Fields f(j, "");
  out.manifest.format_version = version;
  ASSIGN_OR_RETURN(const int64_t manifest_version,
                   f.Int("format_version", 0, std::numeric_limits<uint32_t>::max()));
  if (manifest_version != version) {
    return f.Error("format_version", absl::StrCat(manifest_version, " != the header's ", version));
  }
  ASSIGN_OR_RETURN(out.state_layout, f.Int("state_layout", 0, std::numeric_limits<int32_t>::max()));
  ASSIGN_OR_RETURN(const Json* sections, f.Array("sections"));
  ASSIGN_OR_RETURN(out.sections, ParseSections(*sections));
  ASSIGN_OR_RETURN(const Json* states, f.Array("states"));
  if (states->empty() || states->size() > 2) {
    return f.Error("states", "must list the model's state and, with a draft, the draft's");
  }
  for (size_t i = 0; i < states->size(); ++i) {
    if (!(*states)[i].is_object()) return f.Error("states", "entries must be objects");
    ASSIGN_OR_RETURN(StateEntry s, ParseState((*states)[i], absl::StrCat("states[", i, "]"),
                                              out.sections.size()));
    out.states.push_back(std::move(s));
  }
  // Every section belongs to exactly one layer.
  std::vector<uint8_t> used(out.sections.size(), 0);
  int64_t state_bytes = 0;
  for (const StateEntry& s : out.states) {
    for (const LayerEntry& l : s.layers) {
      if (used[static_cast<size_t>(l.section)]++ != 0) {
        return Invalid(absl::StrCat("manifest: section ", l.section, " belongs to two layers"));
      }
      if (l.bytes > out.sections[static_cast<size_t>(l.section)].bytes) {
        return Invalid(absl::StrCat("manifest: a layer of ", l.bytes, " bytes in section ",
                                    l.section, " of ", out.sections[l.section].bytes));
      }
      state_bytes += l.bytes;  // sections do not overlap and end before 2^54: no overflow
    }
  }
  if (std::find(used.begin(), used.end(), 0) != used.end()) {
    return Invalid("manifest: a section belongs to no layer");
  }
  const Json* session = nullptr;
  ASSIGN_OR_RETURN(session, f.Object("session"));
  ASSIGN_OR_RETURN(out.manifest.session, ParseSession(*session));
  out.manifest.model_fingerprint = out.states[0].fingerprint;
  out.manifest.session_memory = out.states[0].session_memory;
  if (out.states.size() > 1) out.manifest.draft_fingerprint = out.states[1].fingerprint;
  out.manifest.state_bytes = state_bytes;
  out.data_offset = AlignUp(static_cast<int64_t>(kSnapshotHeaderBytes + manifest_bytes));
  const int64_t data_bytes =
      out.sections.empty() ? 0 : out.sections.back().offset + out.sections.back().bytes;
  out.manifest.total_bytes = out.data_offset + data_bytes;
  return out;
}

// ---- Reading the states ----------------------------------------------------------------------

// Checks one state's manifest entry against the model and builds its host state from the
// sections (checksums already verified).
absl::StatusOr<SessionState> BuildHostState(const TransfoXlModel& impl, const StateEntry& entry,
                                            const std::string& role, std::string_view data,
                                            const std::vector<Section>& sections) {
  const ModelConfig& c = impl.config();
  if (entry.dtype != DTypeName(c.dtype)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "snapshot: the ", role, "'s dtype is ", entry.dtype, ", the model's ", DTypeName(c.dtype)));
  }
  const std::string memory = DTypeName(impl.session_memory());
  if (entry.session_memory != memory) {
    return absl::FailedPreconditionError(absl::StrCat(
        "snapshot: the ", role, "'s session memory is ", entry.session_memory, ", the model's ",
        memory, " (serve it with --session-memory ", entry.session_memory, ")"));
  }
  if (entry.n_layer != c.n_layer) {
    return absl::FailedPreconditionError(absl::StrCat(
        "snapshot: the ", role, " has ", entry.n_layer, " layers, the model ", c.n_layer));
  }
  if (c.max_positions() > 0 && entry.position > c.max_positions()) {
    return Invalid(absl::StrCat("the ", role, "'s position ", entry.position,
                                " exceeds the model's position limit ", c.max_positions()));
  }
  ASSIGN_OR_RETURN(SessionState fresh, impl.NewState());
  SessionState host;
  host.set_position(entry.position);
  for (int64_t l = 0; l < c.n_layer; ++l) {
    const LayerEntry& e = entry.layers[static_cast<size_t>(l)];
    const std::string where = absl::StrCat("snapshot: ", role, " layer ", l);
    const std::string_view kind = EnumName(c.layer(l).attention);
    if (e.attention != kind) {
      return absl::FailedPreconditionError(
          absl::StrCat(where, ": attention ", e.attention, ", the model's ", std::string(kind)));
    }
    const int64_t want_bytes = static_cast<int64_t>(impl.LayerStateBytes(l));
    if (e.bytes != want_bytes) {
      return Invalid(absl::StrCat(where, ": ", e.bytes, " state bytes, the model's ", want_bytes));
    }
    const Section& section = sections[static_cast<size_t>(e.section)];
    const std::string_view bytes =
        data.substr(static_cast<size_t>(section.offset), static_cast<size_t>(section.bytes));
    size_t next = 0;
    int64_t sum = 0;
    absl::StatusOr<std::unique_ptr<LayerState>> layer =
        fresh.layer(l).Map([&](const Tensor& t) -> absl::StatusOr<Tensor> {
          const size_t k = next++;
          if (k >= e.tensors.size()) {
            return Invalid(absl::StrCat(where, ": ", e.tensors.size(),
                                        " tensors, the model's state has more"));
          }
          const TensorEntry& te = e.tensors[k];
          if (te.dtype != t.dtype() || te.shape != t.shape()) {
            return Invalid(absl::StrCat(where, " tensor ", k, ": ", DTypeName(te.dtype), " ",
                                        ShapeToString(te.shape), ", the model's ",
                                        DTypeName(t.dtype()), " ", ShapeToString(t.shape())));
          }
          const auto size = static_cast<int64_t>(t.bytes());
          if (te.bytes != size || te.offset % kAlignment != 0 || te.offset > section.bytes ||
              size > section.bytes - te.offset) {
            return Invalid(absl::StrCat(where, " tensor ", k, ": ", te.bytes, " bytes at ",
                                        te.offset, " do not fit its ", size, " bytes into the ",
                                        section.bytes, "-byte section"));
          }
          sum += size;
          // A fresh host tensor (the CPU backend's) is filled in place: the restored state takes
          // over its storage, so the state's bytes are allocated and written once.
          Tensor out = t.device() == Device::kCpu ? t : Tensor::Empty(t.dtype(), t.shape());
          if (size > 0) std::memcpy(out.raw(), bytes.data() + te.offset, static_cast<size_t>(size));
          return out;
        });
    RETURN_IF_ERROR(layer.status());
    if (next != e.tensors.size()) {
      return Invalid(
          absl::StrCat(where, ": ", e.tensors.size(), " tensors, the model's state has ", next));
    }
    if (sum != want_bytes) {
      return Invalid(absl::StrCat(where, ": tensors of ", sum, " bytes, the model's ", want_bytes));
    }
    const absl::Status bookkeeping = (*layer)->SetBookkeeping(e.bookkeeping, entry.position);
    if (!bookkeeping.ok()) return Invalid(absl::StrCat(where, ": ", bookkeeping.message()));
    const absl::Status contents = (*layer)->CheckContents();
    if (!contents.ok()) return Invalid(absl::StrCat(where, ": ", contents.message()));
    host.layers().push_back(*std::move(layer));
  }
  return host;
}

}  // namespace

absl::StatusOr<SnapshotIdentity> IdentityOf(const Model& model) {
  SnapshotIdentity id;
  ASSIGN_OR_RETURN(const ModelDescription d, model.Describe());
  id.model_fingerprint = d.fingerprint;
  if (model.draft() != nullptr) {
    ASSIGN_OR_RETURN(const ModelDescription dd, model.draft()->Describe());
    id.draft_fingerprint = dd.fingerprint;
  }
  return id;
}

absl::StatusOr<std::string> WriteSnapshot(const Model& model, const SnapshotIdentity& identity,
                                          const SessionState& state,
                                          const SessionState* draft_state,
                                          const SnapshotSession& session) {
  const bool has_draft = model.draft() != nullptr;
  if ((draft_state != nullptr) != has_draft) {
    return absl::InvalidArgumentError(has_draft
                                          ? "snapshot: the model has a draft: its state is needed"
                                          : "snapshot: the model has no draft");
  }
  if (identity.model_fingerprint.empty() || identity.draft_fingerprint.empty() == has_draft) {
    return absl::InvalidArgumentError(
        "snapshot: the identity does not match the model (IdentityOf)");
  }
  RETURN_IF_ERROR(CheckPending(session.pending, model.config().vocab_size));

  struct Role {
    const Model* model;
    const SessionState* state;
    const std::string* fingerprint;
  };
  std::vector<Role> roles = {{&model, &state, &identity.model_fingerprint}};
  if (has_draft) roles.push_back({model.draft().get(), draft_state, &identity.draft_fingerprint});

  // Lay the sections out: each layer's tensors aligned within its section, sections aligned in
  // the data area.
  std::vector<std::vector<HostLayer>> host(roles.size());
  Json states = Json::array(), sections = Json::array();
  int64_t data_bytes = 0;
  for (size_t r = 0; r < roles.size(); ++r) {
    const TransfoXlModel& impl = ModelAccess::Impl(*roles[r].model);
    ASSIGN_OR_RETURN(host[r], HostLayers(impl, *roles[r].state));
    const ModelConfig& c = impl.config();
    Json layers = Json::array();
    for (size_t l = 0; l < host[r].size(); ++l) {
      const HostLayer& h = host[r][l];
      Json tensors = Json::array();
      int64_t offset = 0, bytes = 0;
      for (const Tensor& t : h.tensors) {
        offset = AlignUp(offset);
        tensors.push_back({{"dtype", DTypeName(t.dtype())},
                           {"shape", t.shape()},
                           {"offset", offset},
                           {"bytes", static_cast<int64_t>(t.bytes())}});
        offset += static_cast<int64_t>(t.bytes());
        bytes += static_cast<int64_t>(t.bytes());
      }
      data_bytes = AlignUp(data_bytes);
      sections.push_back({{"offset", data_bytes}, {"bytes", offset}, {"xxh3", ""}});
      layers.push_back({{"attention", EnumName(c.layer(static_cast<int64_t>(l)).attention)},
                        {"bytes", bytes},
                        {"section", sections.size() - 1},
                        {"bookkeeping", h.bookkeeping},
                        {"tensors", std::move(tensors)}});
      data_bytes += offset;
    }
    states.push_back({{"fingerprint", *roles[r].fingerprint},
                      {"dtype", DTypeName(c.dtype)},
                      {"session_memory", DTypeName(impl.session_memory())},
                      {"n_layer", c.n_layer},
                      {"position", roles[r].state->position()},
                      {"layers", std::move(layers)}});
  }
  // Checksums straight from the tensors (padding between them hashed as the zeros it will be),
  // then one buffer of the final size: the state bytes are copied once.
  static constexpr char kZeros[kAlignment] = {};
  size_t s = 0;
  for (const std::vector<HostLayer>& layers : host) {
    for (const HostLayer& h : layers) {
      XXH3_state_t* hash = XXH3_createState();
      if (hash == nullptr) return absl::ResourceExhaustedError("snapshot: out of memory");
      XXH3_64bits_reset(hash);
      int64_t offset = 0;
      for (const Tensor& t : h.tensors) {
        const int64_t aligned = AlignUp(offset);
        if (aligned > offset)
          XXH3_64bits_update(hash, kZeros, static_cast<size_t>(aligned - offset));
        if (t.bytes() > 0) XXH3_64bits_update(hash, t.raw(), t.bytes());
        offset = aligned + static_cast<int64_t>(t.bytes());
      }
      sections[s++]["xxh3"] = Hex(XXH3_64bits_digest(hash));
      XXH3_freeState(hash);
    }
  }
  const Json manifest = {{"format_version", kSnapshotFormatVersion},
                         {"state_layout", kStateLayoutVersion},
                         {"session", SessionJson(session)},
                         {"states", std::move(states)},
                         {"sections", sections}};
  const std::string text = manifest.dump();
  if (static_cast<int64_t>(text.size()) > kMaxSnapshotManifestBytes) {
    return absl::InvalidArgumentError(absl::StrCat("snapshot: the manifest would take ",
                                                   text.size(), " bytes, more than ",
                                                   kMaxSnapshotManifestBytes));
  }
  const int64_t data_offset = AlignUp(static_cast<int64_t>(kSnapshotHeaderBytes + text.size()));
  std::string out(static_cast<size_t>(data_offset + data_bytes), '\0');
  out.replace(kMagicOffset, kSnapshotMagic.size(), kSnapshotMagic);
  PutLe(out, kVersionOffset, kSnapshotFormatVersion, 4);
  PutLe(out, kFlagsOffset, 0, 4);
  PutLe(out, kManifestLenOffset, text.size(), 8);
  PutLe(out, kManifestHashOffset, Xxh3(text), 8);
  out.replace(kSnapshotHeaderBytes, text.size(), text);
  s = 0;
  for (const std::vector<HostLayer>& layers : host) {
    for (const HostLayer& h : layers) {
      char* section = out.data() + data_offset + sections[s++]["offset"].get<int64_t>();
      int64_t offset = 0;
      for (const Tensor& t : h.tensors) {
        offset = AlignUp(offset);
        if (t.bytes() > 0) std::memcpy(section + offset, t.raw(), t.bytes());
        offset += static_cast<int64_t>(t.bytes());
      }
    }
  }
  return out;
}

absl::StatusOr<int64_t> SnapshotManifestPrefixBytes(std::string_view header) {
  ASSIGN_OR_RETURN(const uint64_t manifest_bytes, ManifestBytes(header));
  return static_cast<int64_t>(kSnapshotHeaderBytes + manifest_bytes);
}

absl::StatusOr<SnapshotManifest> ReadSnapshotManifest(std::string_view prefix) {
  ASSIGN_OR_RETURN(ParsedManifest parsed, ParseManifest(prefix));
  return std::move(parsed.manifest);
}

absl::StatusOr<RestoredSession> ReadSnapshot(const Model& model, const SnapshotIdentity& identity,
                                             std::string_view bytes) {
  ASSIGN_OR_RETURN(ParsedManifest parsed, ParseManifest(bytes));
  const SnapshotManifest& m = parsed.manifest;
  if (m.model_fingerprint != identity.model_fingerprint) {
    return absl::FailedPreconditionError(absl::StrCat("snapshot: written by model ",
                                                      m.model_fingerprint, ", this model is ",
                                                      identity.model_fingerprint));
  }
  if (m.draft_fingerprint != identity.draft_fingerprint) {
    auto name = [](const std::string& f) { return f.empty() ? std::string("none") : f; };
    return absl::FailedPreconditionError(
        absl::StrCat("snapshot: written with draft ", name(m.draft_fingerprint),
                     ", this model's draft is ", name(identity.draft_fingerprint)));
  }
  if ((model.draft() != nullptr) != (parsed.states.size() == 2)) {
    return absl::FailedPreconditionError("snapshot: the draft does not match the model's");
  }
  if (parsed.state_layout != kStateLayoutVersion) {
    return absl::FailedPreconditionError(
        absl::StrCat("snapshot: state layout ", parsed.state_layout, "; this build reads layout ",
                     kStateLayoutVersion));
  }
  const auto size = static_cast<int64_t>(bytes.size());
  if (size != m.total_bytes) {
    return Invalid(absl::StrCat(size < m.total_bytes ? "truncated: " : "trailing bytes: ", size,
                                " bytes, the manifest says ", m.total_bytes));
  }
  // Padding (between the manifest and the data, and between sections) is zero.
  const std::string_view data = bytes.substr(static_cast<size_t>(parsed.data_offset));
  const size_t manifest_end = kSnapshotHeaderBytes + GetLe(bytes, kManifestLenOffset, 8);
  auto zeros = [](std::string_view gap) {
    return std::all_of(gap.begin(), gap.end(), [](char c) { return c == 0; });
  };
  if (!zeros(bytes.substr(manifest_end, static_cast<size_t>(parsed.data_offset) - manifest_end))) {
    return Invalid("nonzero padding after the manifest");
  }
  int64_t end = 0;
  for (size_t i = 0; i < parsed.sections.size(); ++i) {
    const Section& s = parsed.sections[i];
    if (!zeros(data.substr(static_cast<size_t>(end), static_cast<size_t>(s.offset - end)))) {
      return Invalid(absl::StrCat("nonzero padding before section ", i));
    }
    const std::string_view body =
        data.substr(static_cast<size_t>(s.offset), static_cast<size_t>(s.bytes));
    if (Xxh3(body) != s.xxh3) {
      return absl::DataLossError(absl::StrCat("snapshot: section ", i, " checksum ",
                                              Hex(Xxh3(body)), " != recorded ", Hex(s.xxh3)));
    }
    end = s.offset + s.bytes;
  }
  RETURN_IF_ERROR(CheckPending(m.session.pending, model.config().vocab_size));

  RestoredSession out;
  out.manifest = m;
  const std::vector<const Model*> models = {&model, model.draft().get()};
  for (size_t r = 0; r < parsed.states.size(); ++r) {
    const TransfoXlModel& impl = ModelAccess::Impl(*models[r]);
    ASSIGN_OR_RETURN(
        SessionState host,
        BuildHostState(impl, parsed.states[r], r == 0 ? "model" : "draft", data, parsed.sections));
    // The host state is the state on the CPU backend; another device gets a copy.
    if (models[r]->device() == "cpu") {
      (r == 0 ? out.state : out.draft_state) = std::move(host);
      continue;
    }
    ASSIGN_OR_RETURN(SessionState state, impl.StateFromHost(host));
    (r == 0 ? out.state : out.draft_state) = std::move(state);
  }
  return out;
}

}  // namespace mnemo::engine::api
