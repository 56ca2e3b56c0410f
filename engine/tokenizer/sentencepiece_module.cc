// libmnemo_sentencepiece.so: the only code that includes or links sentencepiece (see
// sentencepiece_module.h for why it is a module of its own).
#include "engine/tokenizer/sentencepiece_module.h"

#include <sentencepiece_processor.h>

#include <new>
#include <string>
#include <vector>

namespace {

struct Processor {
  sentencepiece::SentencePieceProcessor sp;
};

// Per thread: encode and decode run concurrently on one processor.
thread_local std::string error_message;

const char* Check(Processor*, const sentencepiece::util::Status& status) {
  if (status.ok()) return nullptr;
  error_message = status.ToString();
  return error_message.c_str();
}

void* Create() { return new (std::nothrow) Processor(); }
void Destroy(void* p) { delete static_cast<Processor*>(p); }

const char* Load(void* p, const char* path) {
  auto* proc = static_cast<Processor*>(p);
  return Check(proc, proc->sp.Load(path));
}

const char* Encode(void* p, const char* text, size_t size, void* ids) {
  auto* proc = static_cast<Processor*>(p);
  std::vector<int> out;
  const char* error = Check(proc, proc->sp.Encode(std::string(text, size), &out));
  if (error == nullptr) {
    auto* dst = static_cast<std::vector<int>*>(ids);
    dst->insert(dst->end(), out.begin(), out.end());
  }
  return error;
}

const char* Decode(void* p, const int* ids, size_t count, void* text) {
  auto* proc = static_cast<Processor*>(p);
  return Check(
      proc, proc->sp.Decode(std::vector<int>(ids, ids + count), static_cast<std::string*>(text)));
}

int VocabSize(void* p) { return static_cast<Processor*>(p)->sp.GetPieceSize(); }
int EosId(void* p) { return static_cast<Processor*>(p)->sp.eos_id(); }

constexpr MnemoSentencePieceApi kApi = {
    kMnemoSentencePieceApiVersion, Create, Destroy, Load, Encode, Decode, VocabSize, EosId};

}  // namespace

extern "C" __attribute__((visibility("default"))) const MnemoSentencePieceApi*
mnemo_sentencepiece_api() {
  return &kApi;
}
