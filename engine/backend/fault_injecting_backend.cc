// FaultInjectingBackend: the fault spec's parser, the per-op decision, the spec file's reload and
// the forwarding of every op to the base backend.
#include "engine/backend/fault_injecting_backend.h"

#include <cstdio>
#include <utility>

#include <sys/stat.h>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

#include "base/read_file.h"
#include "base/status_macros.h"

namespace mnemo::engine {
namespace {

// Abseil here is built with its own string_view (Debian's ABI), distinct from std::string_view.
absl::string_view AbslView(std::string_view s) { return {s.data(), s.size()}; }

constexpr std::array<BackendOp, kNumBackendOps> kAllOps = {
    BackendOp::kAlloc,   BackendOp::kUpload,    BackendOp::kDownload, BackendOp::kCopy,
    BackendOp::kCompute, BackendOp::kAttention, BackendOp::kAppend,   BackendOp::kSync};

constexpr auto kSpecCheckInterval = std::chrono::milliseconds(10);

absl::string_view ModeName(BackendFaultMode mode) {
  switch (mode) {
    case BackendFaultMode::kOom:
      return "oom";
    case BackendFaultMode::kFail:
      return "fail";
    case BackendFaultMode::kLate:
      return "late";
  }
  return "?";
}

absl::Status BadRule(absl::string_view rule, absl::string_view why) {
  return absl::InvalidArgumentError(
      absl::StrCat("backend fault spec: bad rule \"", rule, "\": ", why));
}

absl::StatusOr<BackendFaultRule> ParseRule(absl::string_view text) {
  BackendFaultRule rule;
  absl::string_view rest = text;
  const size_t colon = rest.find(':');
  if (colon == absl::string_view::npos) return BadRule(text, "expected op:mode");
  const absl::string_view op = rest.substr(0, colon);
  rest.remove_prefix(colon + 1);
  if (op != "any") {
    for (const BackendOp o : kAllOps) {
      if (AbslView(BackendOpName(o)) == op) rule.op = o;
    }
    if (!rule.op.has_value()) {
      return BadRule(text,
                     "op must be alloc, upload, download, copy, compute, attention, append, sync "
                     "or any");
    }
  }
  const size_t mode_end = rest.find_first_of("@%");
  const absl::string_view mode = rest.substr(0, mode_end);
  if (mode == "oom") {
    rule.mode = BackendFaultMode::kOom;
  } else if (mode == "fail") {
    rule.mode = BackendFaultMode::kFail;
  } else if (mode == "late") {
    rule.mode = BackendFaultMode::kLate;
  } else {
    return BadRule(text, "mode must be oom, fail or late");
  }
  rest.remove_prefix(mode_end == absl::string_view::npos ? rest.size() : mode_end);
  if (!rest.empty() && rest.front() == '@') {
    rest.remove_prefix(1);
    absl::string_view n = rest.substr(0, rest.find('%'));
    rest.remove_prefix(n.size());
    if (!n.empty() && n.back() == '+') {
      rule.and_later = true;
      n.remove_suffix(1);
    }
    if (!absl::SimpleAtoi(n, &rule.nth) || rule.nth < 1)
      return BadRule(text, "@N needs a whole number N >= 1");
  }
  if (!rest.empty() && rest.front() == '%') {
    rest.remove_prefix(1);
    if (!absl::SimpleAtod(rest, &rule.probability) || !(rule.probability >= 0) ||
        rule.probability > 1)
      return BadRule(text, "%P needs a probability P in [0, 1]");
    rest = {};
  }
  if (!rest.empty()) return BadRule(text, "expected op:mode[@N[+]][%P]");
  return rule;
}

}  // namespace

std::string_view BackendOpName(BackendOp op) {
  switch (op) {
    case BackendOp::kAlloc:
      return "alloc";
    case BackendOp::kUpload:
      return "upload";
    case BackendOp::kDownload:
      return "download";
    case BackendOp::kCopy:
      return "copy";
    case BackendOp::kCompute:
      return "compute";
    case BackendOp::kAttention:
      return "attention";
    case BackendOp::kAppend:
      return "append";
    case BackendOp::kSync:
      return "sync";
  }
  return "?";
}

absl::StatusOr<std::vector<BackendFaultRule>> ParseBackendFaultSpec(std::string_view spec) {
  std::vector<BackendFaultRule> rules;
  for (const absl::string_view piece : absl::StrSplit(AbslView(spec), absl::ByAnyChar(",\n"))) {
    const absl::string_view text = absl::StripAsciiWhitespace(piece);
    if (text.empty()) continue;
    ASSIGN_OR_RETURN(BackendFaultRule rule, ParseRule(text));
    rules.push_back(rule);
  }
  return rules;
}

FaultInjectingBackend::FaultInjectingBackend(std::unique_ptr<Backend> base, uint64_t seed)
    : base_(std::move(base)), rng_(seed) {}

FaultInjectingBackend::~FaultInjectingBackend() = default;

absl::Status FaultInjectingBackend::SetSpec(std::string_view spec) {
  const absl::string_view text = absl::StripAsciiWhitespace(AbslView(spec));
  if (!text.empty() && text.front() == '@') {
    const std::string path(absl::StripAsciiWhitespace(text.substr(1)));
    if (path.empty()) return absl::InvalidArgumentError("backend fault spec: @ needs a file path");
    MutexLock lock(&mu_);
    spec_path_ = path;
    spec_stamp_ = SpecFileStamp{};
    SetRulesLocked({});
    ReloadSpecFileLocked();
    return absl::OkStatus();
  }
  ASSIGN_OR_RETURN(std::vector<BackendFaultRule> rules,
                   ParseBackendFaultSpec(std::string_view(text.data(), text.size())));
  MutexLock lock(&mu_);
  spec_path_.clear();
  SetRulesLocked(std::move(rules));
  return absl::OkStatus();
}

void FaultInjectingBackend::SetRulesLocked(std::vector<BackendFaultRule> rules) {
  rules_ = std::move(rules);
  matched_.assign(rules_.size(), 0);
}

void FaultInjectingBackend::ReloadSpecFileLocked() {
  next_check_ = std::chrono::steady_clock::now() + kSpecCheckInterval;
  SpecFileStamp stamp;
  struct stat st {};
  if (::stat(spec_path_.c_str(), &st) == 0) {
    stamp.exists = true;
    stamp.size = st.st_size;
    stamp.mtime_ns = int64_t{st.st_mtim.tv_sec} * 1000000000 + st.st_mtim.tv_nsec;
    stamp.inode = st.st_ino;
  }
  if (stamp == spec_stamp_) return;
  spec_stamp_ = stamp;
  if (!stamp.exists) {
    SetRulesLocked({});
    return;
  }
  absl::StatusOr<std::string> text = mnemo::ReadFile(spec_path_);
  absl::StatusOr<std::vector<BackendFaultRule>> rules =
      text.ok() ? ParseBackendFaultSpec(*text) : text.status();
  if (!rules.ok()) {
    std::fprintf(stderr, "mnemo: backend fault spec %s: %s (no faults)\n", spec_path_.c_str(),
                 std::string(rules.status().message()).c_str());
    SetRulesLocked({});
    return;
  }
  SetRulesLocked(*std::move(rules));
}

FaultInjectingBackend::Decision FaultInjectingBackend::Decide(BackendOp op, std::string_view what) {
  MutexLock lock(&mu_);
  if (!spec_path_.empty() && std::chrono::steady_clock::now() >= next_check_) {
    ReloadSpecFileLocked();
  }
  const BackendFaultRule* fired = nullptr;
  for (size_t i = 0; i < rules_.size(); ++i) {
    const BackendFaultRule& rule = rules_[i];
    if (rule.op.has_value() && *rule.op != op) continue;
    const int64_t n = ++matched_[i];
    bool pick = rule.nth == 0 || n == rule.nth || (rule.and_later && n > rule.nth);
    if (pick && rule.probability < 1) {
      pick = std::uniform_real_distribution<double>(0, 1)(rng_) < rule.probability;
    }
    if (pick && fired == nullptr) fired = &rule;
  }
  if (fired == nullptr) return {};
  ++injected_[static_cast<size_t>(op)];
  const std::string where =
      absl::StrCat("injected fault (", AbslView(BackendOpName(op)), ":", ModeName(fired->mode),
                   ") in ", AbslView(what), " on ", AbslView(base_->name()));
  switch (fired->mode) {
    case BackendFaultMode::kOom:
      return {false, absl::ResourceExhaustedError(absl::StrCat(where, ": out of device memory"))};
    case BackendFaultMode::kFail:
      return {false, absl::InternalError(absl::StrCat(where, ": the operation failed"))};
    case BackendFaultMode::kLate:
      return {true, absl::InternalError(absl::StrCat(where, ": error reported after it ran"))};
  }
  return {false, absl::InternalError(where)};
}

template <typename F>
absl::Status FaultInjectingBackend::Run(BackendOp op, std::string_view what, F&& f) {
  Decision d = Decide(op, what);
  if (!d.run) return d.status;
  absl::Status s = f();
  if (!s.ok()) return s;
  return d.status;
}

int64_t FaultInjectingBackend::injected(BackendOp op) const {
  MutexLock lock(&mu_);
  return injected_[static_cast<size_t>(op)];
}

int64_t FaultInjectingBackend::injected_total() const {
  MutexLock lock(&mu_);
  int64_t total = 0;
  for (const int64_t n : injected_) total += n;
  return total;
}

// Ops that return a tensor: a late fault drops it (the caller sees only the error) after the
// base made it, so its memory is allocated and released as with a deferred device error.
absl::StatusOr<Tensor> FaultInjectingBackend::Allocate(DType dtype, std::vector<int64_t> shape) {
  Decision d = Decide(BackendOp::kAlloc, "Allocate");
  if (!d.run) return d.status;
  ASSIGN_OR_RETURN(Tensor t, base_->Allocate(dtype, std::move(shape)));
  if (!d.status.ok()) return d.status;
  return t;
}

absl::StatusOr<Tensor> FaultInjectingBackend::AllocateUninitialized(DType dtype,
                                                                    std::vector<int64_t> shape) {
  Decision d = Decide(BackendOp::kAlloc, "AllocateUninitialized");
  if (!d.run) return d.status;
  ASSIGN_OR_RETURN(Tensor t, base_->AllocateUninitialized(dtype, std::move(shape)));
  if (!d.status.ok()) return d.status;
  return t;
}

absl::StatusOr<Tensor> FaultInjectingBackend::CopyFromHost(const Tensor& host) {
  Decision d = Decide(BackendOp::kUpload, "CopyFromHost");
  if (!d.run) return d.status;
  ASSIGN_OR_RETURN(Tensor t, base_->CopyFromHost(host));
  if (!d.status.ok()) return d.status;
  return t;
}

absl::StatusOr<Tensor> FaultInjectingBackend::CopyToHost(const Tensor& t) {
  Decision d = Decide(BackendOp::kDownload, "CopyToHost");
  if (!d.run) return d.status;
  ASSIGN_OR_RETURN(Tensor out, base_->CopyToHost(t));
  if (!d.status.ok()) return d.status;
  return out;
}

absl::Status FaultInjectingBackend::Copy(const Tensor& src, Tensor& dst) {
  return Run(BackendOp::kCopy, "Copy", [&] { return base_->Copy(src, dst); });
}

absl::Status FaultInjectingBackend::FillRows(const Tensor& row, Tensor& dst) {
  return Run(BackendOp::kCopy, "FillRows", [&] { return base_->FillRows(row, dst); });
}

absl::Status FaultInjectingBackend::GatherRows(const Tensor& x, const std::vector<int64_t>& rows,
                                               Tensor& y) {
  return Run(BackendOp::kCopy, "GatherRows", [&] { return base_->GatherRows(x, rows, y); });
}

absl::Status FaultInjectingBackend::ConcatColumns(const Tensor& a, const Tensor& b, Tensor& y) {
  return Run(BackendOp::kCopy, "ConcatColumns", [&] { return base_->ConcatColumns(a, b, y); });
}

absl::Status FaultInjectingBackend::Synchronize() {
  return Run(BackendOp::kSync, "Synchronize", [&] { return base_->Synchronize(); });
}

absl::Status FaultInjectingBackend::Linear(const Tensor& x, const Tensor& w, const Tensor* bias,
                                           Tensor& y) {
  return Run(BackendOp::kCompute, "Linear", [&] { return base_->Linear(x, w, bias, y); });
}

absl::Status FaultInjectingBackend::SparseLinear(const Tensor& x, const SparseWeight& w,
                                                 const Tensor* bias, Tensor& y) {
  return Run(BackendOp::kCompute, "SparseLinear",
             [&] { return base_->SparseLinear(x, w, bias, y); });
}

absl::Status FaultInjectingBackend::LinearBiasActivation(const Tensor& x, const Tensor& w,
                                                         const Tensor& bias, Activation act,
                                                         Tensor& y) {
  return Run(BackendOp::kCompute, "LinearBiasActivation",
             [&] { return base_->LinearBiasActivation(x, w, bias, act, y); });
}

absl::Status FaultInjectingBackend::LayerNorm(const Tensor& x, const Tensor& gamma,
                                              const Tensor& beta, float eps, Tensor& y) {
  return Run(BackendOp::kCompute, "LayerNorm",
             [&] { return base_->LayerNorm(x, gamma, beta, eps, y); });
}

absl::Status FaultInjectingBackend::AddLayerNorm(Tensor& x, const Tensor& delta,
                                                 const Tensor& gamma, const Tensor& beta, float eps,
                                                 Tensor& normed) {
  return Run(BackendOp::kCompute, "AddLayerNorm",
             [&] { return base_->AddLayerNorm(x, delta, gamma, beta, eps, normed); });
}

absl::Status FaultInjectingBackend::BiasActivation(const Tensor& bias, Activation act, Tensor& y) {
  return Run(BackendOp::kCompute, "BiasActivation",
             [&] { return base_->BiasActivation(bias, act, y); });
}

absl::Status FaultInjectingBackend::Add(const Tensor& a, const Tensor& b, Tensor& y) {
  return Run(BackendOp::kCompute, "Add", [&] { return base_->Add(a, b, y); });
}

absl::Status FaultInjectingBackend::Embedding(const Tensor& table, const std::vector<int32_t>& ids,
                                              float scale, Tensor& y) {
  return Run(BackendOp::kCompute, "Embedding",
             [&] { return base_->Embedding(table, ids, scale, y); });
}

absl::Status FaultInjectingBackend::RelativeAttention(
    const std::vector<RelativeAttentionArgs>& batch) {
  return Run(BackendOp::kAttention, "RelativeAttention",
             [&] { return base_->RelativeAttention(batch); });
}

absl::Status FaultInjectingBackend::LinearAttention(const std::vector<LinearAttentionArgs>& batch) {
  return Run(BackendOp::kAttention, "LinearAttention",
             [&] { return base_->LinearAttention(batch); });
}

absl::Status FaultInjectingBackend::SparseAttention(const std::vector<SparseAttentionArgs>& batch) {
  return Run(BackendOp::kAttention, "SparseAttention",
             [&] { return base_->SparseAttention(batch); });
}

absl::Status FaultInjectingBackend::LshAttention(const std::vector<LshAttentionArgs>& batch) {
  return Run(BackendOp::kAttention, "LshAttention", [&] { return base_->LshAttention(batch); });
}

absl::Status FaultInjectingBackend::CompressMemory(const std::vector<CompressArgs>& batch) {
  return Run(BackendOp::kAttention, "CompressMemory", [&] { return base_->CompressMemory(batch); });
}

absl::Status FaultInjectingBackend::AppendToMemory(const std::vector<MemoryAppendArgs>& batch) {
  return Run(BackendOp::kAppend, "AppendToMemory", [&] { return base_->AppendToMemory(batch); });
}

// A failed BeginStep leaves no step open (the model does not abort it), so every fault there
// fails before the base sees the call.
absl::Status FaultInjectingBackend::BeginStep(uint64_t key) {
  Decision d = Decide(BackendOp::kSync, "BeginStep");
  if (!d.status.ok()) return d.status;
  return base_->BeginStep(key);
}

// A failed EndStep closes the step too: the base abandons it (fail) or runs it (late).
absl::Status FaultInjectingBackend::EndStep() {
  Decision d = Decide(BackendOp::kSync, "EndStep");
  if (!d.run) {
    base_->AbortStep();
    return d.status;
  }
  RETURN_IF_ERROR(base_->EndStep());
  return d.status;
}

}  // namespace mnemo::engine
