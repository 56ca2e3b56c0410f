// FaultInjectingBackend: the spec's rules (op, mode, @N, @N+, %P), what each mode does to the op
// (oom and fail: not run; late: run, then the error), the spec file switched while in use, and a
// model loaded with backend_faults: the load itself meets no fault, its forward passes do.
#include "engine/backend/fault_injecting_backend.h"

#include <cstdio>
#include <string>
#include <vector>

#include "absl/time/clock.h"

#include "engine/api/model.h"
#include "gtest/gtest.h"
#include "tests/test_checkpoint.h"

namespace mnemo::engine {
namespace {

FaultInjectingBackend Wrapped() { return FaultInjectingBackend(MakeCpuBackend()); }

Tensor Filled(float value, int64_t n) {
  Tensor t = Tensor::Empty(DType::kF32, {n});
  for (int64_t i = 0; i < n; ++i) t.data<float>()[i] = value;
  return t;
}

TEST(FaultInjectingBackendTest, SpecsParseAndBadRulesAreNamed) {
  auto rules = ParseBackendFaultSpec("alloc:oom, compute:fail@3, any:late@2+%0.5\nsync:fail%1");
  ASSERT_TRUE(rules.ok()) << rules.status();
  ASSERT_EQ(rules->size(), 4u);
  EXPECT_EQ((*rules)[0].op, BackendOp::kAlloc);
  EXPECT_EQ((*rules)[0].mode, BackendFaultMode::kOom);
  EXPECT_EQ((*rules)[1].nth, 3);
  EXPECT_FALSE((*rules)[1].and_later);
  EXPECT_FALSE((*rules)[2].op.has_value());
  EXPECT_EQ((*rules)[2].mode, BackendFaultMode::kLate);
  EXPECT_TRUE((*rules)[2].and_later);
  EXPECT_DOUBLE_EQ((*rules)[2].probability, 0.5);
  EXPECT_TRUE(ParseBackendFaultSpec("").ok());
  for (const char* bad : {"alloc", "disk:fail", "alloc:tear", "alloc:oom@0", "alloc:oom@x",
                          "alloc:oom%2", "alloc:oom%-0.1", "alloc:oom@1x"}) {
    auto parsed = ParseBackendFaultSpec(bad);
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(parsed.status().message().find(bad), std::string::npos) << parsed.status();
  }
}

TEST(FaultInjectingBackendTest, ModesFailBeforeOrAfterTheOp) {
  FaultInjectingBackend be = Wrapped();
  EXPECT_EQ(be.device(), Device::kCpu);
  ASSERT_TRUE(be.SetSpec("alloc:oom").ok());
  auto t = be.Allocate(DType::kF32, {4});
  EXPECT_EQ(t.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(t.status().message().find("injected fault (alloc:oom)"), std::string::npos);
  EXPECT_EQ(be.AllocateUninitialized(DType::kF32, {4}).status().code(),
            absl::StatusCode::kResourceExhausted);

  // fail: the op does not run; late: it runs, then reports the error.
  const Tensor src = Filled(1, 4);
  Tensor dst = Filled(0, 4);
  ASSERT_TRUE(be.SetSpec("copy:fail").ok());
  EXPECT_EQ(be.Copy(src, dst).code(), absl::StatusCode::kInternal);
  EXPECT_EQ(dst.data<float>()[0], 0);
  ASSERT_TRUE(be.SetSpec("copy:late").ok());
  EXPECT_EQ(be.Copy(src, dst).code(), absl::StatusCode::kInternal);
  EXPECT_EQ(dst.data<float>()[3], 1);
  EXPECT_EQ(be.injected(BackendOp::kAlloc), 2);
  EXPECT_EQ(be.injected(BackendOp::kCopy), 2);
  EXPECT_EQ(be.injected_total(), 4);

  // Other ops pass through; "" turns faults off.
  ASSERT_TRUE(be.SetSpec("").ok());
  EXPECT_TRUE(be.Allocate(DType::kF32, {4}).ok());
  EXPECT_TRUE(be.Add(src, src, dst).ok());
  EXPECT_EQ(dst.data<float>()[0], 2);
  // A bad spec leaves the rules as they were.
  ASSERT_TRUE(be.SetSpec("compute:fail").ok());
  EXPECT_FALSE(be.SetSpec("compute:boom").ok());
  EXPECT_EQ(be.Add(src, src, dst).code(), absl::StatusCode::kInternal);
}

TEST(FaultInjectingBackendTest, NthAndLaterAndProbability) {
  FaultInjectingBackend be = Wrapped();
  const Tensor src = Filled(1, 2);
  Tensor dst = Filled(0, 2);
  ASSERT_TRUE(be.SetSpec("compute:fail@3").ok());
  auto outcomes = [&](int n) {
    std::vector<bool> failed(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) failed[static_cast<size_t>(i)] = !be.Add(src, src, dst).ok();
    return failed;
  };
  EXPECT_EQ(outcomes(5), (std::vector<bool>{false, false, true, false, false}));
  ASSERT_TRUE(be.SetSpec("compute:fail@2+").ok());  // counts restart
  EXPECT_EQ(outcomes(4), (std::vector<bool>{false, true, true, true}));
  // Ops of another kind do not count for the rule.
  ASSERT_TRUE(be.SetSpec("copy:fail@1").ok());
  EXPECT_TRUE(be.Add(src, src, dst).ok());
  EXPECT_FALSE(be.Copy(src, dst).ok());

  ASSERT_TRUE(be.SetSpec("any:fail%0.25").ok());
  int n = 0;
  for (int i = 0; i < 2000; ++i) n += be.Add(src, src, dst).ok() ? 0 : 1;
  EXPECT_GT(n, 350);
  EXPECT_LT(n, 650);
  ASSERT_TRUE(be.SetSpec("any:fail%0").ok());
  for (int i = 0; i < 100; ++i) EXPECT_TRUE(be.Add(src, src, dst).ok());
}

TEST(FaultInjectingBackendTest, SpecFileIsReReadWhenItChanges) {
  const test::ScopedTempDir dir("backend_faults");
  const std::string path = dir.File("faults");
  FaultInjectingBackend be = Wrapped();
  const Tensor src = Filled(1, 2);
  Tensor dst = Filled(0, 2);
  ASSERT_TRUE(be.SetSpec("@" + path).ok());  // missing file: no faults
  EXPECT_TRUE(be.Add(src, src, dst).ok());
  auto replace = [&](const std::string& text) {
    test::WriteFile(path + ".new", text);
    ASSERT_EQ(std::rename((path + ".new").c_str(), path.c_str()), 0);
  };
  auto fails_soon = [&](bool want) {  // the file is looked at every 10 ms at most
    for (int i = 0; i < 200; ++i) {
      if (!be.Add(src, src, dst).ok() == want) return true;
      absl::SleepFor(absl::Milliseconds(5));
    }
    return false;
  };
  replace("compute:fail");
  EXPECT_TRUE(fails_soon(true));
  replace("compute:nonsense");  // a bad file: no faults
  EXPECT_TRUE(fails_soon(false));
  replace("compute:fail");
  EXPECT_TRUE(fails_soon(true));
  replace("");
  EXPECT_TRUE(fails_soon(false));
}

TEST(FaultInjectingBackendTest, ModelLoadsCleanlyThenItsForwardPassesFail) {
  const test::ScopedTempDir dir = test::WriteCheckpoint(test::SmallConfig(), 3);
  api::LoadOptions options;
  options.backend_faults = "any:fail";
  auto model = api::Model::Load(dir.path(), options);
  ASSERT_TRUE(model.ok()) << model.status();
  auto state = (*model)->NewState();
  EXPECT_EQ(state.status().code(), absl::StatusCode::kInternal) << state.status();

  options.backend_faults = "attention:late@1";
  model = api::Model::Load(dir.path(), options);
  ASSERT_TRUE(model.ok()) << model.status();
  state = (*model)->NewState();
  ASSERT_TRUE(state.ok()) << state.status();
  const std::vector<int32_t> tokens = {1, 2, 3};
  Tensor logits;
  absl::Status s =
      (*model)->Forward({SequenceInput{tokens.data(), 3, &*state}}, LogitsMode::kLast, &logits);
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal) << s;
  EXPECT_NE(s.message().find("RelativeAttention"), std::string::npos) << s;
  s = (*model)->Forward({SequenceInput{tokens.data(), 3, &*state}}, LogitsMode::kLast, &logits);
  EXPECT_TRUE(s.ok()) << s;

  options.backend_faults = "alloc:explode";
  EXPECT_EQ(api::Model::Load(dir.path(), options).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace mnemo::engine
