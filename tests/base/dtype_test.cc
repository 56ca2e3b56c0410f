// base/dtype: f16/bf16 ↔ f32 conversions checked against their IEEE definitions, bit pattern by
// bit pattern, and ConvertToFloat on unaligned input.
#include "base/dtype.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "gtest/gtest.h"

namespace mnemo {
namespace {

uint32_t Bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, sizeof(b));
  return b;
}

float FromBits(uint32_t b) {
  float f;
  std::memcpy(&f, &b, sizeof(f));
  return f;
}

bool HalfIsNaN(uint16_t h) { return (h & 0x7c00u) == 0x7c00u && (h & 0x3ffu) != 0; }

// binary16 value straight from the IEEE 754 definition.
double HalfReference(uint16_t h) {
  const double sign = (h & 0x8000u) ? -1.0 : 1.0;
  const int exponent = (h >> 10) & 0x1f;
  const int mantissa = h & 0x3ff;
  if (exponent == 0) return sign * std::ldexp(mantissa, -24);
  if (exponent == 0x1f) {
    return mantissa == 0 ? sign * std::numeric_limits<double>::infinity()
                         : std::numeric_limits<double>::quiet_NaN();
  }
  return sign * std::ldexp(1024 + mantissa, exponent - 25);
}

TEST(DTypeTest, SizesNamesAndParsing) {
  EXPECT_EQ(DTypeSize(DType::kF32), 4u);
  EXPECT_EQ(DTypeSize(DType::kF16), 2u);
  EXPECT_EQ(DTypeSize(DType::kBF16), 2u);
  EXPECT_EQ(DTypeSize(DType::kI32), 4u);
  for (DType d : {DType::kF32, DType::kF16, DType::kBF16, DType::kI32}) {
    auto parsed = ParseDTypeName(DTypeName(d));
    ASSERT_TRUE(parsed.ok()) << DTypeName(d);
    EXPECT_EQ(*parsed, d);
  }
  EXPECT_STREQ(DTypeName(DType::kBF16), "bfloat16");
  auto bad = ParseDTypeName("float64");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("float64"), absl::string_view::npos);
  EXPECT_FALSE(ParseDTypeName("F32").ok());  // torch spelling only
}

TEST(HalfTest, HalfToFloatMatchesDefinitionForAllBitPatterns) {
  for (uint32_t h = 0; h <= 0xffff; ++h) {
    const float got = HalfToFloat(static_cast<uint16_t>(h));
    const double want = HalfReference(static_cast<uint16_t>(h));
    if (HalfIsNaN(static_cast<uint16_t>(h))) {
      EXPECT_TRUE(std::isnan(got)) << std::hex << h;
      EXPECT_EQ(std::signbit(got), (h & 0x8000u) != 0) << std::hex << h;
    } else {
      ASSERT_EQ(static_cast<double>(got), want) << std::hex << h;
      EXPECT_EQ(std::signbit(got), (h & 0x8000u) != 0) << std::hex << h;  // -0 stays -0
    }
  }
}

TEST(HalfTest, RoundTripsEveryNonNaNBitPattern) {
  for (uint32_t h = 0; h <= 0xffff; ++h) {
    const uint16_t back = FloatToHalf(HalfToFloat(static_cast<uint16_t>(h)));
    if (HalfIsNaN(static_cast<uint16_t>(h))) {
      EXPECT_TRUE(HalfIsNaN(back)) << std::hex << h << " -> " << back;
      EXPECT_EQ(back & 0x8000u, h & 0x8000u) << std::hex << h;
    } else {
      ASSERT_EQ(back, h) << std::hex << h;
    }
  }
}

// Every pair of neighbouring finite halves (subnormals included): the midpoint rounds to the even
// one, a float just above goes up, just below goes down; negatives mirror.
TEST(HalfTest, RoundsToNearestEvenBetweenEveryNeighbourPair) {
  for (uint32_t h = 0; h < 0x7bff; ++h) {
    const double lo = HalfReference(static_cast<uint16_t>(h));
    const double hi = HalfReference(static_cast<uint16_t>(h + 1));
    const float mid = static_cast<float>((lo + hi) / 2);
    ASSERT_EQ(static_cast<double>(mid), (lo + hi) / 2) << "midpoint not exact at " << h;
    const uint16_t even = static_cast<uint16_t>((h & 1u) ? h + 1 : h);
    ASSERT_EQ(FloatToHalf(mid), even) << std::hex << h;
    ASSERT_EQ(FloatToHalf(-mid), even | 0x8000u) << std::hex << h;
    ASSERT_EQ(FloatToHalf(std::nextafter(mid, 1e9f)), h + 1) << std::hex << h;
    ASSERT_EQ(FloatToHalf(std::nextafter(mid, -1e9f)), h) << std::hex << h;
  }
}

TEST(HalfTest, OverflowGoesToInfinityAtTheRoundingBoundary) {
  EXPECT_EQ(FloatToHalf(65504.0f), 0x7bff);
  // 65520 is halfway between 65504 (odd mantissa) and 65536 (= inf): ties to even → inf.
  EXPECT_EQ(FloatToHalf(std::nextafter(65520.0f, 0.0f)), 0x7bff);
  EXPECT_EQ(FloatToHalf(65520.0f), 0x7c00);
  EXPECT_EQ(FloatToHalf(-65520.0f), 0xfc00);
  EXPECT_EQ(FloatToHalf(1e6f), 0x7c00);
  EXPECT_EQ(FloatToHalf(std::numeric_limits<float>::max()), 0x7c00);
  EXPECT_EQ(FloatToHalf(std::numeric_limits<float>::infinity()), 0x7c00);
  EXPECT_EQ(FloatToHalf(-std::numeric_limits<float>::infinity()), 0xfc00);
}

TEST(HalfTest, SubnormalsAndUnderflow) {
  EXPECT_EQ(FloatToHalf(0.0f), 0x0000);
  EXPECT_EQ(FloatToHalf(-0.0f), 0x8000);
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -24)), 0x0001);  // smallest subnormal
  EXPECT_EQ(FloatToHalf(-std::ldexp(1.0f, -24)), 0x8001);
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -25)), 0x0000);  // tie with 0: even is 0
  EXPECT_EQ(FloatToHalf(std::nextafter(std::ldexp(1.0f, -25), 1.0f)), 0x0001);
  EXPECT_EQ(FloatToHalf(3 * std::ldexp(1.0f, -25)), 0x0002);  // tie between 1 and 2
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -26)), 0x0000);
  EXPECT_EQ(FloatToHalf(-std::ldexp(1.0f, -30)), 0x8000);  // underflow keeps the sign
  EXPECT_EQ(FloatToHalf(std::numeric_limits<float>::denorm_min()), 0x0000);
  EXPECT_EQ(FloatToHalf(1023 * std::ldexp(1.0f, -24)), 0x03ff);  // largest subnormal
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -14)), 0x0400);         // smallest normal
  EXPECT_EQ(HalfToFloat(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(HalfToFloat(0x03ff), 1023 * std::ldexp(1.0f, -24));
}

TEST(HalfTest, InfinityAndNaN) {
  EXPECT_EQ(HalfToFloat(0x7c00), std::numeric_limits<float>::infinity());
  EXPECT_EQ(HalfToFloat(0xfc00), -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(HalfToFloat(0x7e00)));
  EXPECT_TRUE(std::isnan(HalfToFloat(0x7c01)));  // signalling payload stays NaN, not inf
  EXPECT_TRUE(HalfIsNaN(FloatToHalf(std::numeric_limits<float>::quiet_NaN())));
  // A float NaN whose payload lies only in the low mantissa bits must not become inf.
  EXPECT_TRUE(HalfIsNaN(FloatToHalf(FromBits(0x7f800001u))));
  EXPECT_TRUE(HalfIsNaN(FloatToHalf(FromBits(0xff800001u))));
  EXPECT_EQ(FloatToHalf(FromBits(0xff800001u)) & 0x8000u, 0x8000u);
}

TEST(BFloat16Test, ToFloatIsTheHighHalfForAllBitPatterns) {
  for (uint32_t b = 0; b <= 0xffff; ++b) {
    const float f = BFloat16ToFloat(static_cast<uint16_t>(b));
    ASSERT_EQ(Bits(f), b << 16) << std::hex << b;
  }
}

TEST(BFloat16Test, RoundTripsEveryNonNaNBitPattern) {
  for (uint32_t b = 0; b <= 0xffff; ++b) {
    const float f = BFloat16ToFloat(static_cast<uint16_t>(b));
    const uint16_t back = FloatToBFloat16(f);
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(BFloat16ToFloat(back))) << std::hex << b;
      EXPECT_EQ(back & 0x8000u, b & 0x8000u) << std::hex << b;
    } else {
      ASSERT_EQ(back, b) << std::hex << b;
    }
  }
}

// Between every pair of neighbouring finite bf16 values (including max finite → inf).
TEST(BFloat16Test, RoundsToNearestEvenBetweenEveryNeighbourPair) {
  for (uint32_t b = 0; b < 0x7f80; ++b) {
    const uint32_t mid = (b << 16) | 0x8000u;
    const uint16_t even = static_cast<uint16_t>((b & 1u) ? b + 1 : b);
    ASSERT_EQ(FloatToBFloat16(FromBits(mid)), even) << std::hex << b;
    ASSERT_EQ(FloatToBFloat16(FromBits(mid | 0x80000000u)), even | 0x8000u) << std::hex << b;
    ASSERT_EQ(FloatToBFloat16(FromBits(mid + 1)), b + 1) << std::hex << b;
    ASSERT_EQ(FloatToBFloat16(FromBits(mid - 1)), b) << std::hex << b;
  }
}

TEST(BFloat16Test, InfinityAndNaN) {
  EXPECT_EQ(FloatToBFloat16(std::numeric_limits<float>::infinity()), 0x7f80);
  EXPECT_EQ(FloatToBFloat16(-std::numeric_limits<float>::infinity()), 0xff80);
  EXPECT_EQ(FloatToBFloat16(std::numeric_limits<float>::max()), 0x7f80);  // rounds past max
  for (uint32_t nan : {0x7f800001u, 0x7fc00000u, 0xff800001u, 0x7fffffffu}) {
    const uint16_t b = FloatToBFloat16(FromBits(nan));
    EXPECT_TRUE(std::isnan(BFloat16ToFloat(b))) << std::hex << nan << " -> " << b;
    EXPECT_EQ(b & 0x8000u, (nan >> 16) & 0x8000u);
  }
}

class ConvertToFloatTest : public ::testing::TestWithParam<size_t> {};

// Source data at every byte offset 0…3 of a buffer: checkpoint tensors have no alignment.
TEST_P(ConvertToFloatTest, ConvertsUnalignedInput) {
  const size_t offset = GetParam();
  const size_t count = 37;
  std::vector<float> values(count);
  for (size_t i = 0; i < count; ++i) values[i] = static_cast<float>(i) * 0.37f - 5.0f;
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16, DType::kI32}) {
    const size_t size = DTypeSize(dtype);
    std::vector<unsigned char> storage(offset + count * size + 1, 0xab);
    unsigned char* src = storage.data() + offset;
    std::vector<float> want(count);
    for (size_t i = 0; i < count; ++i) {
      switch (dtype) {
        case DType::kF32:
          std::memcpy(src + 4 * i, &values[i], 4);
          want[i] = values[i];
          break;
        case DType::kF16: {
          const uint16_t h = FloatToHalf(values[i]);
          std::memcpy(src + 2 * i, &h, 2);
          want[i] = HalfToFloat(h);
          break;
        }
        case DType::kBF16: {
          const uint16_t h = FloatToBFloat16(values[i]);
          std::memcpy(src + 2 * i, &h, 2);
          want[i] = BFloat16ToFloat(h);
          break;
        }
        case DType::kI32: {
          const int32_t v = static_cast<int32_t>(i) - 20;
          std::memcpy(src + 4 * i, &v, 4);
          want[i] = static_cast<float>(v);
          break;
        }
      }
    }
    std::vector<float> got(count + 1, -7.0f);
    ConvertToFloat(dtype, src, got.data(), count);
    for (size_t i = 0; i < count; ++i) {
      ASSERT_EQ(got[i], want[i]) << DTypeName(dtype) << " offset " << offset << " i " << i;
    }
    EXPECT_EQ(got[count], -7.0f) << "wrote past count for " << DTypeName(dtype);
    std::vector<float> untouched(1, -7.0f);
    ConvertToFloat(dtype, src, untouched.data(), 0);
    EXPECT_EQ(untouched[0], -7.0f) << "count 0 wrote for " << DTypeName(dtype);
  }
}

INSTANTIATE_TEST_SUITE_P(Offsets, ConvertToFloatTest, ::testing::Values(0, 1, 2, 3));

}  // namespace
}  // namespace mnemo
