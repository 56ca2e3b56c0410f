// GPU dtype widening against the CPU conversion (the oracle). Skips with a message when the
// machine has no CUDA device; runs on the GPU machine.
#include "kernels/cuda/convert.h"

#include <cmath>
#include <cstdint>
#include <vector>

#include <gtest/gtest.h>

#include "base/dtype.h"

namespace mnemo::kernels::cuda {
namespace {

class CudaConvertTest : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device on this machine: GPU test not run";
  }
};

TEST_P(CudaConvertTest, MatchesCpuForEveryBitPattern) {
  const bool is_bf16 = GetParam();
  std::vector<uint16_t> src(65536 + 7);
  for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<uint16_t>(i);
  std::vector<float> gpu(src.size()), cpu(src.size());
  ASSERT_EQ(WidenToFloatOnDevice(src.data(), gpu.data(), src.size(), is_bf16), "");
  ConvertToFloat(is_bf16 ? DType::kBF16 : DType::kF16, src.data(), cpu.data(), src.size());
  for (size_t i = 0; i < src.size(); ++i) {
    if (std::isnan(cpu[i])) {
      EXPECT_TRUE(std::isnan(gpu[i])) << "pattern " << i;
    } else {
      EXPECT_EQ(gpu[i], cpu[i]) << "pattern " << i;
    }
  }
}

TEST_P(CudaConvertTest, EmptyInputIsANoOp) {
  EXPECT_EQ(WidenToFloatOnDevice(nullptr, nullptr, 0, GetParam()), "");
}

INSTANTIATE_TEST_SUITE_P(HalfAndBFloat16, CudaConvertTest, ::testing::Values(false, true));

}  // namespace
}  // namespace mnemo::kernels::cuda
