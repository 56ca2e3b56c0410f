// Processor over libmnemo_sentencepiece.so, loaded once per process with its own symbol scope.
#include "engine/tokenizer/sentencepiece_processor_wrapper.h"

#include <dlfcn.h>
#include <unistd.h>

#include <cstdlib>
#include <mutex>

#include "engine/tokenizer/sentencepiece_module.h"

namespace mnemo::engine::spm {
namespace {

// Sanitizer runtimes refuse RTLD_DEEPBIND; sanitized builds never link protobuf next to it.
// GCC defines __SANITIZE_*__; clang 14 only answers __has_feature.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define MNEMO_SANITIZED_BUILD 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define MNEMO_SANITIZED_BUILD 1
#endif
#endif
#ifdef MNEMO_SANITIZED_BUILD
constexpr int kOpenFlags = RTLD_NOW | RTLD_LOCAL;
#else
constexpr int kOpenFlags = RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND;
#endif

std::string ExecutableDir() {
  char path[4096];
  const ssize_t n = readlink("/proc/self/exe", path, sizeof(path) - 1);
  if (n <= 0) return {};
  std::string exe(path, static_cast<size_t>(n));
  return exe.substr(0, exe.rfind('/') + 1);
}

struct Module {
  const MnemoSentencePieceApi* api = nullptr;
  std::string error;
};

// Tries $MNEMO_SENTENCEPIECE_MODULE, the executable's directory, the build directory, then the
// loader's search path.
const Module& LoadModule() {
  static const Module module = [] {
    Module m;
    std::vector<std::string> candidates;
    if (const char* env = std::getenv("MNEMO_SENTENCEPIECE_MODULE")) candidates.emplace_back(env);
    candidates.push_back(ExecutableDir() + kMnemoSentencePieceModule);
#ifdef MNEMO_SENTENCEPIECE_MODULE_DIR
    candidates.push_back(std::string(MNEMO_SENTENCEPIECE_MODULE_DIR) + "/" +
                         kMnemoSentencePieceModule);
#endif
    candidates.emplace_back(kMnemoSentencePieceModule);
    std::string errors;
    for (const std::string& path : candidates) {
      void* handle = dlopen(path.c_str(), kOpenFlags);
      if (handle == nullptr) {
        errors += std::string("\n  ") + dlerror();
        continue;
      }
      auto get = reinterpret_cast<const MnemoSentencePieceApi* (*)()>(
          dlsym(handle, "mnemo_sentencepiece_api"));
      if (get == nullptr || get()->version != kMnemoSentencePieceApiVersion) {
        errors += "\n  " + path + ": not a matching mnemo sentencepiece module";
        continue;
      }
      m.api = get();  // kept loaded for the life of the process
      return m;
    }
    m.error = "cannot load the sentencepiece module " + std::string(kMnemoSentencePieceModule) +
              " (set MNEMO_SENTENCEPIECE_MODULE to its path):" + errors;
    return m;
  }();
  return module;
}

}  // namespace

struct Processor::Impl {
  const MnemoSentencePieceApi* api = nullptr;
  void* processor = nullptr;
};

Processor::Processor() : impl_(std::make_unique<Impl>()) {}

Processor::~Processor() {
  if (impl_->processor != nullptr) impl_->api->destroy(impl_->processor);
}

std::string Processor::Load(const std::string& path) {
  const Module& module = LoadModule();
  if (module.api == nullptr) return module.error;
  if (impl_->processor == nullptr) {
    impl_->api = module.api;
    impl_->processor = module.api->create();
    if (impl_->processor == nullptr) return "out of memory";
  }
  const char* error = impl_->api->load(impl_->processor, path.c_str());
  return error == nullptr ? std::string() : std::string(error);
}

std::string Processor::Encode(const std::string& text, std::vector<int>* ids) const {
  const char* error = impl_->api->encode(impl_->processor, text.data(), text.size(), ids);
  return error == nullptr ? std::string() : std::string(error);
}

std::string Processor::Decode(const std::vector<int>& ids, std::string* text) const {
  const char* error = impl_->api->decode(impl_->processor, ids.data(), ids.size(), text);
  return error == nullptr ? std::string() : std::string(error);
}

int Processor::vocab_size() const { return impl_->api->vocab_size(impl_->processor); }
int Processor::eos_id() const { return impl_->api->eos_id(impl_->processor); }

}  // namespace mnemo::engine::spm
