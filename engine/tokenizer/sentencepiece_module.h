// The boundary between the engine and libmnemo_sentencepiece.so, the module that alone links
// Debian's sentencepiece. That library carries its own copy of protobuf 3.14 and exports it;
// linked into a process that also has protobuf 3.21 (every gRPC program), the two copies bind
// to each other's symbols and crash at start. So sentencepiece is loaded at run time with a
// private symbol scope (dlopen RTLD_LOCAL | RTLD_DEEPBIND), and only this table of plain C
// functions crosses the boundary. Plain standard-library types only: the header also must not
// see Abseil (sentencepiece's header declares its own absl::string_view).
#pragma once

#include <cstddef>

extern "C" {

struct MnemoSentencePieceApi {
  int version;  // kMnemoSentencePieceApiVersion
  // A processor, or null when out of memory.
  void* (*create)();
  void (*destroy)(void* processor);
  // Each returns null on success, else an error message owned by the module (valid until the
  // calling thread's next call).
  const char* (*load)(void* processor, const char* path);
  // Appends the ids of `text` to *ids (a std::vector<int>*).
  const char* (*encode)(void* processor, const char* text, size_t size, void* ids);
  // Sets *text (a std::string*) to the text of `ids`.
  const char* (*decode)(void* processor, const int* ids, size_t count, void* text);
  int (*vocab_size)(void* processor);
  int (*eos_id)(void* processor);
};

// The module's one exported symbol.
const MnemoSentencePieceApi* mnemo_sentencepiece_api();
}

inline constexpr int kMnemoSentencePieceApiVersion = 1;
inline constexpr char kMnemoSentencePieceModule[] = "libmnemo_sentencepiece.so";
