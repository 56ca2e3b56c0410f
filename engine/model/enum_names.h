// The canonical names of the model's enums: one table per enum, in declaration order, used by
// config.json parsing, the server's wire conversion and the docs (docs/checkpoint-format.md spells
// these same names). EnumName(value) gives a value's name, ParseEnum<E>(name) the value of a name
// (nullopt for an unknown one) and EnumNames<E>() every name, for error messages.
//
// Adding an enumerator means adding its row here; the static_asserts below and
// tests/engine/model/enum_names_test.cc fail until the table covers it in order.
#pragma once

#include <array>
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "engine/memory/durability.h"
#include "engine/model/model_config.h"
#include "engine/model/model_options.h"

namespace mnemo::engine {

template <typename E>
struct EnumEntry {
  E value;
  std::string_view name;
};

// Specialised per enum: `kEntries`, one row per enumerator in declaration order.
template <typename E>
struct EnumTable;

template <>
struct EnumTable<Activation> {
  static constexpr std::array<EnumEntry<Activation>, 4> kEntries{{
      {Activation::kRelu, "relu"},
      {Activation::kGelu, "gelu"},
      {Activation::kSilu, "silu"},
      {Activation::kGeluTanh, "gelu_tanh"},
  }};
};

template <>
struct EnumTable<MemoryInit> {
  static constexpr std::array<EnumEntry<MemoryInit>, 2> kEntries{{
      {MemoryInit::kZeros, "zeros"},
      {MemoryInit::kEmpty, "empty"},
  }};
};

template <>
struct EnumTable<AttentionKind> {
  static constexpr std::array<EnumEntry<AttentionKind>, 6> kEntries{{
      {AttentionKind::kDense, "dense"},
      {AttentionKind::kLinear, "linear"},
      {AttentionKind::kSparse, "sparse"},
      {AttentionKind::kLsh, "lsh"},
      {AttentionKind::kMemoryCompressed, "memory_compressed"},
      {AttentionKind::kRouting, "routing"},
  }};
};

template <>
struct EnumTable<SparsePattern> {
  static constexpr std::array<EnumEntry<SparsePattern>, 4> kEntries{{
      {SparsePattern::kWindow, "window"},
      {SparsePattern::kStrided, "strided"},
      {SparsePattern::kFixed, "fixed"},
      {SparsePattern::kBigBird, "bigbird"},
  }};
};

template <>
struct EnumTable<MemoryKind> {
  static constexpr std::array<EnumEntry<MemoryKind>, 2> kEntries{{
      {MemoryKind::kXl, "xl"},
      {MemoryKind::kCompressive, "compressive"},
  }};
};

template <>
struct EnumTable<Compression> {
  static constexpr std::array<EnumEntry<Compression>, 5> kEntries{{
      {Compression::kMaxPool, "max_pool"},
      {Compression::kMeanPool, "mean_pool"},
      {Compression::kConv1d, "conv1d"},
      {Compression::kDilatedConv, "dilated_conv"},
      {Compression::kMostUsed, "most_used"},
  }};
};

template <>
struct EnumTable<FeatureMap> {
  static constexpr std::array<EnumEntry<FeatureMap>, 3> kEntries{{
      {FeatureMap::kElu, "elu"},
      {FeatureMap::kFavor, "favor"},
      {FeatureMap::kRfa, "rfa"},
  }};
};

template <>
struct EnumTable<Durability> {
  static constexpr std::array<EnumEntry<Durability>, 3> kEntries{{
      {Durability::kNone, "none"},
      {Durability::kAsync, "async"},
      {Durability::kSync, "sync"},
  }};
};

template <>
struct EnumTable<CpuWeights> {
  static constexpr std::array<EnumEntry<CpuWeights>, 3> kEntries{{
      {CpuWeights::kAsStored, "stored"},
      {CpuWeights::kFloat32, "float32"},
      {CpuWeights::kBf16Products, "bf16-products"},
  }};
};

// Whether row i of E's table holds the enumerator whose value is i (declaration order, no gaps).
template <typename E>
constexpr bool TableInDeclarationOrder() {
  const auto& entries = EnumTable<E>::kEntries;
  for (size_t i = 0; i < entries.size(); ++i) {
    if (static_cast<size_t>(entries[i].value) != i) return false;
  }
  return true;
}

// The last enumerator of each enum: a new one after it makes the table's size check fail.
static_assert(TableInDeclarationOrder<Activation>() &&
              EnumTable<Activation>::kEntries.size() == size_t(Activation::kGeluTanh) + 1);
static_assert(TableInDeclarationOrder<MemoryInit>() &&
              EnumTable<MemoryInit>::kEntries.size() == size_t(MemoryInit::kEmpty) + 1);
static_assert(TableInDeclarationOrder<AttentionKind>() &&
              EnumTable<AttentionKind>::kEntries.size() == size_t(AttentionKind::kRouting) + 1);
static_assert(TableInDeclarationOrder<SparsePattern>() &&
              EnumTable<SparsePattern>::kEntries.size() == size_t(SparsePattern::kBigBird) + 1);
static_assert(TableInDeclarationOrder<MemoryKind>() &&
              EnumTable<MemoryKind>::kEntries.size() == size_t(MemoryKind::kCompressive) + 1);
static_assert(TableInDeclarationOrder<Compression>() &&
              EnumTable<Compression>::kEntries.size() == size_t(Compression::kMostUsed) + 1);
static_assert(TableInDeclarationOrder<FeatureMap>() &&
              EnumTable<FeatureMap>::kEntries.size() == size_t(FeatureMap::kRfa) + 1);
static_assert(TableInDeclarationOrder<Durability>() &&
              EnumTable<Durability>::kEntries.size() == size_t(Durability::kSync) + 1);
static_assert(TableInDeclarationOrder<CpuWeights>() &&
              EnumTable<CpuWeights>::kEntries.size() == size_t(CpuWeights::kBf16Products) + 1);

// The canonical name of `value` ("" only for a value outside the enum, i.e. a corrupted one).
template <typename E>
constexpr std::string_view EnumName(E value) {
  const auto& entries = EnumTable<E>::kEntries;
  const auto i = static_cast<size_t>(value);
  return i < entries.size() ? entries[i].name : std::string_view();
}

// The value named `name` (exact, case-sensitive match), nullopt for any other text.
template <typename E>
constexpr std::optional<E> ParseEnum(std::string_view name) {
  for (const EnumEntry<E>& e : EnumTable<E>::kEntries) {
    if (e.name == name) return e.value;
  }
  return std::nullopt;
}

// Every name of E, in declaration order.
template <typename E>
std::vector<std::string> EnumNames() {
  std::vector<std::string> names;
  for (const EnumEntry<E>& e : EnumTable<E>::kEntries) names.emplace_back(e.name);
  return names;
}

}  // namespace mnemo::engine
