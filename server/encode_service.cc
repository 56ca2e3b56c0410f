// InferenceService.Encode: a document streams in (text and ids, as Ingest takes them), is
// tokenized and bounded as it arrives, then runs window by window through the encoder's scheduler
// (windows of concurrent requests share passes) while the vectors stream out.
#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"

#include "base/status_macros.h"
#include "server/proto_conversion.h"
#include "server/services.h"
#include "server/session_runner.h"
#include "server/text_chunker.h"

namespace mnemo::server {
namespace {

using engine::api::EncoderSequence;
using engine::api::EncodeWindow;
using engine::api::Pooling;

// Per-token responses carry about this many bytes of vectors at most (gRPC's default receive
// limit is 4 MiB).
constexpr int64_t kResponseVectorBytes = int64_t{1} << 20;

Pooling PoolingOf(v1::Pooling p) {
  switch (p) {
    case v1::POOLING_MEAN:
      return Pooling::kMean;
    case v1::POOLING_FIRST:
      return Pooling::kFirst;
    case v1::POOLING_FUNNEL:
      return Pooling::kFunnel;
    default:
      return Pooling::kNone;
  }
}

// The first message's options checked against the model (positions against the document's length
// once it is known).
absl::Status CheckOptions(const v1::EncodeRequest& first, const engine::api::Encoder& encoder) {
  const engine::api::EncoderConfig& c = encoder.config();
  FieldViolations violations;
  const int64_t w = first.window_tokens();
  if (w != 0 && (w < encoder.min_window() || w > c.max_tokens())) {
    violations.Add("window_tokens", absl::StrCat("must be 0 (the model's maximum) or in [",
                                                 encoder.min_window(), ", ", c.max_tokens(), "]"));
  }
  if (first.pooling() == v1::POOLING_FUNNEL && !c.funnel()) {
    violations.Add("pooling", absl::StrCat("POOLING_FUNNEL is a Funnel encoder's; this one is ",
                                           c.architecture));
  }
  for (const auto& [name, g] : {std::pair{"global_positions", &first.global_positions()},
                                std::pair{"mlm_positions", &first.mlm_positions()}}) {
    for (int i = 0; i < g->size(); ++i) {
      if ((*g)[i] < 0 || (i > 0 && (*g)[i] <= (*g)[i - 1])) {
        violations.Add(absl::StrCat(name, "[", i, "]"),
                       "positions must be ≥ 0 and strictly ascending");
        break;
      }
    }
  }
  if (first.global_positions_size() > 0 && !c.longformer()) {
    violations.Add("global_positions", absl::StrCat("global positions are Longformer's: a ",
                                                    c.architecture, " encoder has none"));
  }
  RETURN_IF_ERROR(violations.ToStatus());
  if (first.mlm_positions_size() > 0 && !c.mlm_head) {
    return absl::FailedPreconditionError(
        "this encoder has no masked-LM head (config mlm_head): mlm_positions cannot be served");
  }
  return absl::OkStatus();
}

// One window in flight: what the scheduler reads and writes must outlive its ticket, which is
// destroyed first (declared last).
struct WindowStep {
  EncodeWindow window;
  EncoderSequence sequence;
  engine::api::EncodedWindow out;
  std::unique_ptr<Scheduler::Ticket> ticket;
};

}  // namespace

grpc::Status InferenceServiceImpl::Encode(
    grpc::ServerContext* context,
    grpc::ServerReaderWriter<v1::EncodeResponse, v1::EncodeRequest>* stream) {
  RpcScope scope(ctx_, "Encode", context);
  auto run = [&]() -> absl::Status {
    RETURN_IF_ERROR(scope.Admit());
    RETURN_IF_ERROR(scope.CheckTokens());
    v1::EncodeRequest message;
    (void)v1::TakeRequestParseError();  // what an earlier call on this thread left behind
    if (!stream->Read(&message)) {
      if (grpc::Status e = v1::TakeRequestParseError(); !e.ok()) {
        return InvalidField("messages[0]", e.error_message());
      }
      return InvalidField("chunk", "the stream ended before its first message");
    }
    RETURN_IF_ERROR(CheckRequest(message, ctx_.limits, 0));
    ASSIGN_OR_RETURN(LoadedEncoder * model, ctx_.models->FindEncoder(message.model()));
    const engine::api::Encoder& encoder = *model->encoder;
    RETURN_IF_ERROR(CheckOptions(message, encoder));
    engine::api::EncodeOptions options;
    options.pooling = PoolingOf(message.pooling());
    options.global_positions.assign(message.global_positions().begin(),
                                    message.global_positions().end());
    options.window_tokens = message.window_tokens();
    options.mlm_positions.assign(message.mlm_positions().begin(), message.mlm_positions().end());

    // The document, bounded as it arrives.
    std::vector<int32_t> ids;
    TextChunker chunker;
    const int64_t vocab = encoder.config().vocab_size;
    auto append = [&](std::span<const int32_t> more, const std::string& field) -> absl::Status {
      if (static_cast<int64_t>(ids.size() + more.size()) > ctx_.limits.max_encode_tokens) {
        return InvalidField(
            field, absl::StrCat("the document holds more than the ", ctx_.limits.max_encode_tokens,
                                " tokens one Encode may carry (--max-encode-tokens)"));
      }
      ids.insert(ids.end(), more.begin(), more.end());
      scope.ChargeTokens(static_cast<int64_t>(more.size()));
      return absl::OkStatus();
    };
    auto feed_text = [&](const std::string& text, const std::string& field) -> absl::Status {
      if (text.empty()) return absl::OkStatus();
      auto encoded = model->tokenizer->Encode(text);
      if (!encoded.ok()) return InvalidField(field, std::string(encoded.status().message()));
      return append(*encoded, field);
    };
    int64_t index = 0;
    do {
      const std::string prefix = index == 0 ? "" : absl::StrCat("messages[", index, "].");
      if (index != 0) {
        RETURN_IF_ERROR(CheckRequest(message, ctx_.limits, index));
        RETURN_IF_ERROR(scope.CheckTokens());
      }
      switch (message.chunk_case()) {
        case v1::EncodeRequest::kText:
          if (model->tokenizer == nullptr) {
            return absl::FailedPreconditionError(absl::StrCat(
                "model \"", model->name, "\" has no tokenizer (tokenizer.model): send token ids"));
          }
          RETURN_IF_ERROR(feed_text(chunker.Push(message.text()), prefix + "text"));
          break;
        case v1::EncodeRequest::kIds: {
          FieldViolations violations;
          CheckTokenIds(message.ids().ids(), vocab, prefix + "ids.ids", violations);
          RETURN_IF_ERROR(violations.ToStatus());
          // Text held back for the next space goes in first: the document keeps its order.
          RETURN_IF_ERROR(feed_text(chunker.Finish(), prefix + "text"));
          const auto& more = message.ids().ids();
          RETURN_IF_ERROR(
              append(std::span(more.data(), static_cast<size_t>(more.size())), prefix + "ids.ids"));
          break;
        }
        case v1::EncodeRequest::CHUNK_NOT_SET:
          break;
      }
      ++index;
    } while (stream->Read(&message));
    if (context->IsCancelled()) return absl::CancelledError("the client cancelled");
    if (grpc::Status e = v1::TakeRequestParseError(); !e.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("messages[", index, "]: ", e.error_message()));
    }
    RETURN_IF_ERROR(feed_text(chunker.Finish(), "text"));
    const auto n = static_cast<int64_t>(ids.size());
    if (n == 0) return InvalidField("chunk", "the document is empty: send text or ids");
    for (const auto& [name, g] : {std::pair{"global_positions", &options.global_positions},
                                  std::pair{"mlm_positions", &options.mlm_positions}}) {
      if (!g->empty() && g->back() >= n) {
        return InvalidField(absl::StrCat(name, "[", g->size() - 1, "]"),
                            absl::StrCat(g->back(), " is past the document's ", n, " tokens"));
      }
    }
    ASSIGN_OR_RETURN(const std::vector<EncodeWindow> windows, encoder.Plan(n, options));

    // The windows, in order, through the scheduler: the next one is queued before the previous
    // one's vectors are written, so the pass and the transfer overlap.
    const RequestControl control = ControlOf(context);
    Scheduler::ActiveStream active(*model->scheduler);
    const int64_t d = encoder.config().d_model;
    engine::api::Pooler pooler(options.pooling, n, d);
    const bool per_token = options.pooling == Pooling::kNone;
    const bool funnel = options.pooling == Pooling::kFunnel;
    const size_t count = windows.size();
    const int64_t vocab_bytes = encoder.config().vocab_size * 4;
    auto submit = [&](size_t k, WindowStep& step) -> absl::Status {
      RETURN_IF_ERROR(CheckControl(control));
      step.window = windows[k];
      step.sequence = engine::api::WindowSequence(ids, step.window, options);
      ASSIGN_OR_RETURN(step.ticket, model->scheduler->SubmitEncode(&step.sequence, &step.out));
      return absl::OkStatus();
    };
    auto write_rows = [&](const WindowStep& step) -> absl::Status {
      const EncodeWindow& w = step.window;
      const int64_t per_message = std::max<int64_t>(1, kResponseVectorBytes / (d * 4));
      for (int64_t t = w.keep_begin; t < w.keep_end; t += per_message) {
        const int64_t rows = std::min(per_message, w.keep_end - t);
        v1::EncodeResponse r;
        r.set_first_token(t);
        r.set_count(rows);
        r.set_dim(d);
        r.set_vectors(step.out.hidden.data<char>() + (t - w.begin) * d * 4,
                      static_cast<size_t>(rows * d * 4));
        r.mutable_ids()->Add(ids.begin() + t, ids.begin() + t + rows);
        if (!stream->Write(r)) return absl::CancelledError("the client went away");
      }
      return absl::OkStatus();
    };
    auto write_mlm = [&](const WindowStep& step) -> absl::Status {
      for (size_t j = 0; j < step.sequence.mlm_positions.size(); ++j) {
        v1::EncodeResponse r;
        v1::MaskedLmLogprobs* m = r.add_mlm();
        m->set_position(step.window.begin + step.sequence.mlm_positions[j]);
        m->set_logprobs(step.out.mlm_logprobs.data<char>() + static_cast<int64_t>(j) * vocab_bytes,
                        static_cast<size_t>(vocab_bytes));
        if (!stream->Write(r)) return absl::CancelledError("the client went away");
      }
      return absl::OkStatus();
    };
    WindowStep steps[2];  // the one being written and the next one queued
    RETURN_IF_ERROR(submit(0, steps[0]));
    for (size_t k = 0; k < count; ++k) {
      WindowStep& current = steps[k % 2];
      RETURN_IF_ERROR(current.ticket->Wait(control.deadline, control.cancelled).status());
      current.ticket.reset();
      if (k + 1 < count) RETURN_IF_ERROR(submit(k + 1, steps[(k + 1) % 2]));
      if (per_token) {
        RETURN_IF_ERROR(write_rows(current));
      } else if (funnel) {  // (the one window): its pooled rows, in messages of about 1 MiB
        const engine::api::Tensor& rows = current.out.pooled;
        const int64_t per_message = std::max<int64_t>(1, kResponseVectorBytes / (d * 4));
        for (int64_t r = 0; r < rows.dim(0); r += per_message) {
          const int64_t take = std::min(per_message, rows.dim(0) - r);
          v1::EncodeResponse out;
          out.set_count(take);
          out.set_dim(d);
          out.set_vectors(rows.data<char>() + r * d * 4, static_cast<size_t>(take * d * 4));
          if (!stream->Write(out)) return absl::CancelledError("the client went away");
        }
      } else {
        pooler.Add(current.window, current.out.hidden);
      }
      RETURN_IF_ERROR(write_mlm(current));
      current.out = engine::api::EncodedWindow();
    }
    v1::EncodeResponse last;
    if (!per_token && !funnel) {
      const engine::api::Tensor pooled = pooler.Finish();
      last.set_count(1);
      last.set_dim(d);
      last.set_vectors(pooled.data<char>(), static_cast<size_t>(d * 4));
    }
    last.set_tokens(n);
    last.set_windows(static_cast<int64_t>(count));
    last.set_done(true);
    ctx_.metrics->EncodedTokens(n);
    if (!stream->Write(last)) return absl::CancelledError("the client went away");
    return absl::OkStatus();
  };
  return scope.Finish(run());
}

}  // namespace mnemo::server
