// CompressionPlan (engine/memory/compression_plan.h): the rows a segment evicts from a layer's
// memory, grouped after the pending rows, against a direct simulation of the ring; the CPU and
// CUDA backends both compress from this plan.
#include "engine/memory/compression_plan.h"

#include <deque>
#include <tuple>
#include <vector>

#include "gtest/gtest.h"

namespace mnemo::engine {
namespace {

using Source = CompressionRow::Source;

XlMemory Ring(int64_t capacity) {
  return XlMemory(Tensor::Zeros(DType::kF32, {capacity, 1}),
                  Tensor::Zeros(DType::kF32, {capacity, 1}));
}

TEST(CompressionPlanTest, WorkedExample) {
  XlMemory ring = Ring(4);
  ring.Advance(3);
  ring.Advance(3);  // full, oldest position in slot 2
  ASSERT_EQ(ring.start(), 2);
  // One row pending; a segment of 3 evicts slots 2, 3, 0: groups of 2 are (pending 0, slot 2)
  // and (slot 3, slot 0).
  CompressionPlan plan = PlanCompression(ring, 1, 3, 2);
  ASSERT_EQ(plan.num_groups(), 2);
  const std::vector<std::pair<Source, int64_t>> want = {
      {Source::kPending, 0}, {Source::kRing, 2}, {Source::kRing, 3}, {Source::kRing, 0}};
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(plan.groups[i].source, want[i].first) << i;
    EXPECT_EQ(plan.groups[i].index, want[i].second) << i;
  }
  EXPECT_TRUE(plan.pending.empty());
  // A segment longer than the memory: its first rows pass straight through.
  plan = PlanCompression(ring, 0, 7, 3);
  ASSERT_EQ(plan.num_groups(), 2);  // 4 stored + 3 of the segment = 7 evicted
  EXPECT_EQ(plan.groups[4].source, Source::kSegment);
  EXPECT_EQ(plan.groups[4].index, 0);
  ASSERT_EQ(plan.pending.size(), 1u);
  EXPECT_EQ(plan.pending[0].source, Source::kSegment);
  EXPECT_EQ(plan.pending[0].index, 2);
}

// Against a simulation that tracks every position's identity through the ring, the pending
// buffer and the groups, over random segment lengths, capacities and rates.
TEST(CompressionPlanTest, MatchesASimulationOfTheStream) {
  for (int64_t capacity : {1, 3, 8}) {
    for (int64_t rate : {1, 2, 3, 5}) {
      XlMemory ring = Ring(capacity);
      std::vector<int64_t> slot_holds(static_cast<size_t>(capacity), -1);  // position per slot
      std::deque<int64_t> stored;    // positions, oldest first
      std::vector<int64_t> pending;  // positions waiting
      int64_t next = 0;
      uint32_t seed = 7;
      for (int step = 0; step < 40; ++step) {
        seed = seed * 1103515245u + 12345u;
        const int64_t t = 1 + (seed >> 16) % 11;
        const CompressionPlan plan =
            PlanCompression(ring, static_cast<int64_t>(pending.size()), t, rate);
        // The positions each planned row stands for.
        auto position = [&](const CompressionRow& r) {
          switch (r.source) {
            case Source::kPending:
              return pending[static_cast<size_t>(r.index)];
            case Source::kRing:
              return slot_holds[static_cast<size_t>(r.index)];
            case Source::kSegment:
              break;
          }
          return next + r.index;
        };
        // Expected: the pending positions, then every position the append pushes out.
        std::vector<int64_t> order = pending;
        std::deque<int64_t> after = stored;
        for (int64_t i = 0; i < t; ++i) {
          after.push_back(next + i);
          if (static_cast<int64_t>(after.size()) > capacity) {
            order.push_back(after.front());
            after.pop_front();
          }
        }
        const auto full = static_cast<int64_t>(order.size()) / rate * rate;
        ASSERT_EQ(static_cast<int64_t>(plan.groups.size()), full);
        for (int64_t i = 0; i < full; ++i) {
          ASSERT_EQ(position(plan.groups[static_cast<size_t>(i)]), order[static_cast<size_t>(i)]);
        }
        std::vector<int64_t> left;
        for (const CompressionRow& r : plan.pending) left.push_back(position(r));
        ASSERT_EQ(left, std::vector<int64_t>(order.begin() + full, order.end()));
        // Apply the append.
        for (int64_t r = 0; r < t; ++r) {
          const int64_t slot = ring.SlotOfNewRow(r, t);
          if (slot >= 0) slot_holds[static_cast<size_t>(slot)] = next + r;
        }
        ring.Advance(t);
        stored = after;
        pending = left;
        next += t;
      }
    }
  }
}

}  // namespace
}  // namespace mnemo::engine
