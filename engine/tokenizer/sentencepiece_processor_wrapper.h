// A plain-C++ facade over sentencepiece. Debian's sentencepiece header declares its own
// absl::string_view, which clashes with Abseil, so only sentencepiece_processor_wrapper.cc may
// include it and this header exposes nothing but the standard library.
#pragma once

#include <memory>
#include <string>
#include <vector>

namespace mnemo::engine::spm {

class Processor {
 public:
  Processor();
  ~Processor();
  Processor(const Processor&) = delete;
  Processor& operator=(const Processor&) = delete;

  // Each returns an empty string on success, else sentencepiece's error message.
  std::string Load(const std::string& path);
  std::string Encode(const std::string& text, std::vector<int>* ids) const;
  std::string Decode(const std::vector<int>& ids, std::string* text) const;
  int vocab_size() const;
  int eos_id() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace mnemo::engine::spm
