// The only translation unit that includes sentencepiece (see the header for why).
#include "engine/tokenizer/sentencepiece_processor_wrapper.h"

#include <sentencepiece_processor.h>

namespace mnemo::engine::spm {

struct Processor::Impl {
  sentencepiece::SentencePieceProcessor sp;
};

Processor::Processor() : impl_(std::make_unique<Impl>()) {}
Processor::~Processor() = default;

std::string Processor::Load(const std::string& path) {
  const auto status = impl_->sp.Load(path);
  return status.ok() ? std::string() : status.ToString();
}

std::string Processor::Encode(const std::string& text, std::vector<int>* ids) const {
  const auto status = impl_->sp.Encode(text, ids);
  return status.ok() ? std::string() : status.ToString();
}

std::string Processor::Decode(const std::vector<int>& ids, std::string* text) const {
  const auto status = impl_->sp.Decode(ids, text);
  return status.ok() ? std::string() : status.ToString();
}

int Processor::vocab_size() const { return impl_->sp.GetPieceSize(); }
int Processor::eos_id() const { return impl_->sp.eos_id(); }

}  // namespace mnemo::engine::spm
