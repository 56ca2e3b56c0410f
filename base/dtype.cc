#include "base/dtype.h"

#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"

namespace mnemo {

size_t DTypeSize(DType dtype) {
  switch (dtype) {
    case DType::kF32:
    case DType::kI32:
      return 4;
    case DType::kF16:
    case DType::kBF16:
      return 2;
  }
  return 0;
}

const char* DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "float32";
    case DType::kF16:
      return "float16";
    case DType::kBF16:
      return "bfloat16";
    case DType::kI32:
      return "int32";
  }
  return "unknown";
}

absl::StatusOr<DType> ParseDTypeName(std::string_view name) {
  if (name == "float32") return DType::kF32;
  if (name == "float16") return DType::kF16;
  if (name == "bfloat16") return DType::kBF16;
  if (name == "int32") return DType::kI32;
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown dtype \"", std::string(name), "\" (expected float32, float16, bfloat16 or int32)"));
}

float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exponent = (h >> 10) & 0x1fu;
  uint32_t mantissa = h & 0x3ffu;
  uint32_t bits;
  if (exponent == 0) {
    if (mantissa == 0) {
      bits = sign;
    } else {  // subnormal: renormalise
      exponent = 127 - 15 + 1;
      while ((mantissa & 0x400u) == 0) {
        mantissa <<= 1;
        --exponent;
      }
      mantissa &= 0x3ffu;
      bits = sign | (exponent << 23) | (mantissa << 13);
    }
  } else if (exponent == 0x1f) {
    bits = sign | 0x7f800000u | (mantissa << 13);
  } else {
    bits = sign | ((exponent + 127 - 15) << 23) | (mantissa << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

uint16_t FloatToHalf(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const uint32_t abs = bits & 0x7fffffffu;
  if (abs > 0x7f800000u) return sign | 0x7e00u;   // NaN
  if (abs >= 0x477ff000u) return sign | 0x7c00u;  // overflow (≥ 65520 rounds to inf)
  if (abs < 0x38800000u) {                        // result is subnormal or zero
    if (abs < 0x33000000u) return sign;           // < 2^-25 rounds to zero
    const uint32_t exponent = abs >> 23;
    const uint32_t mantissa = (abs & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126 - exponent;  // 14..24
    uint32_t half = mantissa >> shift;
    const uint32_t rest = mantissa & ((1u << shift) - 1);
    const uint32_t halfway = 1u << (shift - 1);
    if (rest > halfway || (rest == halfway && (half & 1u))) ++half;
    return sign | static_cast<uint16_t>(half);
  }
  uint32_t half = ((abs >> 13) - ((127 - 15) << 10));
  const uint32_t rest = abs & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (half & 1u))) ++half;
  return sign | static_cast<uint16_t>(half);
}

namespace {
// Checkpoint data may sit at any byte offset of a mapped file: load without alignment assumptions.
inline uint16_t LoadU16(const unsigned char* p) {
  uint16_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline void StoreU16(unsigned char* p, uint16_t v) { std::memcpy(p, &v, sizeof(v)); }
}  // namespace

void ConvertToFloat(DType src_dtype, const void* src, float* dst, size_t count) {
  const auto* bytes = static_cast<const unsigned char*>(src);
  switch (src_dtype) {
    case DType::kF32:
      std::memcpy(dst, src, count * sizeof(float));
      return;
    case DType::kF16:
      for (size_t i = 0; i < count; ++i) dst[i] = HalfToFloat(LoadU16(bytes + 2 * i));
      return;
    case DType::kBF16:
      for (size_t i = 0; i < count; ++i) dst[i] = BFloat16ToFloat(LoadU16(bytes + 2 * i));
      return;
    case DType::kI32:
      for (size_t i = 0; i < count; ++i) {
        int32_t v;
        std::memcpy(&v, bytes + 4 * i, sizeof(v));
        dst[i] = static_cast<float>(v);
      }
      return;
  }
}

void ConvertFromFloat(const float* src, DType dst_dtype, void* dst, size_t count) {
  auto* out = static_cast<unsigned char*>(dst);
  switch (dst_dtype) {
    case DType::kF32:
      std::memcpy(dst, src, count * sizeof(float));
      return;
    case DType::kF16:
      for (size_t i = 0; i < count; ++i) StoreU16(out + 2 * i, FloatToHalf(src[i]));
      return;
    case DType::kBF16:
      for (size_t i = 0; i < count; ++i) StoreU16(out + 2 * i, FloatToBFloat16(src[i]));
      return;
    case DType::kI32:  // truncated toward zero, saturated, NaN as 0 (never UB)
      for (size_t i = 0; i < count; ++i) {
        const float f = src[i];
        const int32_t v = !(f == f)             ? 0
                          : f >= 2147483648.0f  ? std::numeric_limits<int32_t>::max()
                          : f <= -2147483648.0f ? std::numeric_limits<int32_t>::min()
                                                : static_cast<int32_t>(f);
        std::memcpy(out + 4 * i, &v, sizeof(v));
      }
      return;
  }
}

}  // namespace mnemo
