// What backends check before a sparse layer indexes keys by position
// (engine/backend/sparse_layer.h).
#include "engine/backend/sparse_layer.h"

#include <gtest/gtest.h>

namespace mnemo::engine {
namespace {

XlMemory Ring(int64_t capacity) {
  return XlMemory(Tensor::Zeros(DType::kF32, {capacity, 8}),
                  Tensor::Zeros(DType::kF32, {capacity, 8}));
}

TEST(CheckWindowHoldsRecentPositionsTest, TheRingMustHoldEveryPositionThePatternReaches) {
  XlMemory window = Ring(4);
  EXPECT_TRUE(CheckWindowHoldsRecentPositions(window, 0).ok());
  // Position 3 with an empty ring: the pattern's keys 0…2 are nowhere (neither ring nor store).
  const absl::Status missing = CheckWindowHoldsRecentPositions(window, 3);
  EXPECT_EQ(missing.code(), absl::StatusCode::kInternal) << missing;
  EXPECT_NE(missing.message().find("expected 3"), absl::string_view::npos) << missing;
  window.Advance(3);
  EXPECT_TRUE(CheckWindowHoldsRecentPositions(window, 3).ok());
  window.Advance(5);  // full: the last 4 of positions 0…7
  EXPECT_TRUE(CheckWindowHoldsRecentPositions(window, 8).ok());
  EXPECT_TRUE(CheckWindowHoldsRecentPositions(window, 1000).ok());
  EXPECT_EQ(CheckWindowHoldsRecentPositions(window, 2).code(), absl::StatusCode::kInternal);
}

}  // namespace
}  // namespace mnemo::engine
