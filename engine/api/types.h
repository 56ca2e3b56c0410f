// The engine's value types as the server and the command line see them: tensors, session states,
// batches, sampling parameters and results, finish reasons, model configuration and the canonical
// names of its enums, the tokenizer interface and UTF-8 helpers. Everything here is a plain value
// or an interface; the engine's internals stay behind engine/api/model.h and
// engine/api/generation.h. `server/` and `tools/cli/` include engine headers only from
// engine/api/ (tools/check_layering.sh).
#pragma once

#include "engine/memory/durability.h"
#include "engine/memory/session_state.h"
#include "engine/model/draft_spec.h"
#include "engine/model/enum_names.h"
#include "engine/model/model_config.h"
#include "engine/model/model_options.h"
#include "engine/model/sequence_input.h"
#include "engine/sampling/sampler.h"
#include "engine/sampling/stop_condition.h"
#include "engine/tensor/tensor.h"
#include "engine/tokenizer/tokenizer.h"

namespace mnemo::engine::api {

using engine::Activation;
using engine::AttentionKind;
using engine::Compression;
using engine::Durability;
using engine::FeatureMap;
using engine::LayerConfig;
using engine::MemoryInit;
using engine::MemoryKind;
using engine::ModelConfig;
using engine::SparsePattern;

using engine::EnumName;
using engine::EnumNames;
using engine::ParseEnum;

using engine::CpuWeights;
using engine::LogitsMode;
using engine::ModelOptions;
using engine::ParseCpuWeights;
using engine::ParseSessionMemory;
using engine::SequenceInput;
using engine::SessionState;
using engine::Tensor;

using engine::FinishReason;
using engine::FinishReasonName;
using engine::LogSoftmax;
using engine::LogSumExp;
using engine::SampledToken;
using engine::SamplingParams;
using engine::ValidateSamplingParams;

using engine::CompleteUtf8Prefix;
using engine::IsValidUtf8;
using engine::Tokenizer;

using engine::kMaxDraftTokens;

}  // namespace mnemo::engine::api
