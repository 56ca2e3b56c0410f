#include <cmath>
#include <optional>

#include "absl/strings/str_cat.h"

#include "base/status_macros.h"
#include "server/proto_conversion.h"
#include "server/services.h"
#include "server/text_chunker.h"

namespace mnemo::server {
namespace {

// The session a request runs on (leased) or, without one, a fresh memory for the model.
struct Target {
  std::unique_ptr<SessionLease> lease;
  LoadedModel* model = nullptr;
  SessionMemory one_shot;
  SessionMemory& live() { return lease ? lease->memory() : one_shot; }
};

absl::StatusOr<Target> Resolve(ServiceContext& ctx, const Caller& caller,
                               const std::string& session_id, const std::string& model_name,
                               int64_t expected_version) {
  Target t;
  if (!session_id.empty()) {
    ASSIGN_OR_RETURN(t.lease, ctx.sessions->Acquire(session_id, expected_version, caller));
    t.model = &t.lease->model();
    if (!model_name.empty() && model_name != t.model->name) {
      return InvalidField("model", absl::StrCat("the session belongs to model \"", t.model->name,
                                                "\"; leave model empty or name that one"));
    }
    return t;
  }
  if (expected_version != 0) {
    return InvalidField("expected_state_version", "needs a session_id");
  }
  ASSIGN_OR_RETURN(t.model, ctx.models->Find(model_name));
  ASSIGN_OR_RETURN(t.one_shot, NewMemory(*t.model));
  return t;
}

// Token ids of a prompt or scored text given as text or ids (`field` names the oneof).
absl::StatusOr<std::vector<int32_t>> InputTokens(const LoadedModel& model, bool is_text,
                                                 const std::string& text, bool is_ids,
                                                 const v1::TokenIds& ids,
                                                 const RequestLimits& limits) {
  std::vector<int32_t> tokens;
  if (is_text) {
    if (model.tokenizer == nullptr) {
      return absl::FailedPreconditionError(
          absl::StrCat("model \"", model.name,
                       "\" has no tokenizer (tokenizer.model, vocab.words or a byte vocabulary): "
                       "send token ids"));
    }
    auto encoded = model.tokenizer->Encode(text);
    if (!encoded.ok()) return InvalidField("text", std::string(encoded.status().message()));
    tokens = *std::move(encoded);
  } else if (is_ids) {
    FieldViolations violations;
    CheckTokenIds(ids.ids(), model.model->config().vocab_size, "ids.ids", violations);
    RETURN_IF_ERROR(violations.ToStatus());
    tokens.assign(ids.ids().begin(), ids.ids().end());
  }
  if (static_cast<int64_t>(tokens.size()) > limits.max_input_tokens) {
    return InvalidField(
        is_text ? "text" : "ids",
        absl::StrCat(tokens.size(), " tokens is more than the ", limits.max_input_tokens,
                     " one request may carry; use Ingest"));
  }
  return tokens;
}

v1::TokenLogprob TokenLogprobOf(int32_t id, float logprob) {
  v1::TokenLogprob t;
  t.set_id(id);
  t.set_logprob(logprob);
  return t;
}

}  // namespace

grpc::Status InferenceServiceImpl::Generate(grpc::ServerContext* context,
                                            const v1::GenerateRequest* request,
                                            grpc::ServerWriter<v1::GenerateEvent>* writer) {
  RpcScope scope(ctx_, "Generate", context);
  auto run = [&]() -> absl::Status {
    RETURN_IF_ERROR(scope.Admit());
    RETURN_IF_ERROR(CheckRequest(*request, ctx_.limits));
    RETURN_IF_ERROR(scope.CheckTokens());
    FieldViolations violations;
    if (request->max_tokens() < 1 || request->max_tokens() > ctx_.limits.max_generate_tokens) {
      violations.Add("max_tokens",
                     absl::StrCat("must be in [1, ", ctx_.limits.max_generate_tokens, "]"));
    }
    if (request->top_logprobs() < 0 || request->top_logprobs() > 20) {
      violations.Add("top_logprobs", "must be in [0, 20]");
    }
    if (request->stop_size() > ctx_.limits.max_stop_strings) {
      violations.Add("stop", absl::StrCat("at most ", ctx_.limits.max_stop_strings, " strings"));
    }
    for (int i = 0; i < request->stop_size(); ++i) {
      const size_t n = request->stop(i).size();
      if (n == 0 || n > static_cast<size_t>(ctx_.limits.max_stop_bytes)) {
        violations.Add(absl::StrCat("stop[", i, "]"),
                       absl::StrCat("must be 1 … ", ctx_.limits.max_stop_bytes, " bytes"));
      }
    }
    if (request->session_id().empty() &&
        request->prompt_case() == v1::GenerateRequest::PROMPT_NOT_SET) {
      violations.Add("prompt", "a generation without a session needs a prompt (text or ids)");
    }
    RETURN_IF_ERROR(violations.ToStatus());

    ASSIGN_OR_RETURN(Target target, Resolve(ctx_, scope.caller(), request->session_id(),
                                            request->model(), request->expected_state_version()));
    LoadedModel& model = *target.model;
    const int64_t vocab = model.model->config().vocab_size;
    GenerationParams params;
    params.max_tokens = request->max_tokens();
    params.ignore_eos = request->ignore_eos();
    params.stop.assign(request->stop().begin(), request->stop().end());
    if (!params.stop.empty() && model.tokenizer == nullptr) {
      violations.Add("stop", "the model has no tokenizer: stop strings cannot match");
    }
    for (int i = 0; i < request->stop_ids_size(); ++i) {
      if (request->stop_ids(i) < 0 || request->stop_ids(i) >= vocab) {
        violations.Add(absl::StrCat("stop_ids[", i, "]"), "is outside the vocabulary");
      }
    }
    params.stop_ids.assign(request->stop_ids().begin(), request->stop_ids().end());
    if (request->has_sampling()) {
      params.sampling = SamplingFromProto(request->sampling(), "sampling", violations);
    } else if (target.lease && target.lease->default_sampling()) {
      params.sampling = *target.lease->default_sampling();
    } else {
      params.sampling.temperature = 0;  // greedy
    }
    params.sampling.top_logprobs = request->top_logprobs();
    RETURN_IF_ERROR(violations.ToStatus());
    ASSIGN_OR_RETURN(
        std::vector<int32_t> prompt,
        InputTokens(model, request->prompt_case() == v1::GenerateRequest::kText, request->text(),
                    request->prompt_case() == v1::GenerateRequest::kIds, request->ids(),
                    ctx_.limits));
    if (prompt.empty() && target.live().pending.empty()) {
      return InvalidField("prompt",
                          "nothing to continue: the session is empty and so is the prompt");
    }

    // Commit modes: KEEP_ALL runs on the session's memory (a snapshot restores it on failure);
    // KEEP_PROMPT appends the prompt there, then generates on a copy; SCRATCH works on a copy.
    const v1::CommitMode commit = request->commit() == v1::COMMIT_MODE_UNSPECIFIED
                                      ? v1::COMMIT_MODE_KEEP_ALL
                                      : request->commit();
    SessionMemory& live = target.live();
    SessionMemory copy;
    std::optional<SessionMemory> snapshot;
    SessionMemory* work = &live;
    if (target.lease && commit == v1::COMMIT_MODE_SCRATCH) {
      ASSIGN_OR_RETURN(copy, CopyMemory(model, live));
      work = &copy;
    } else if (target.lease) {
      ASSIGN_OR_RETURN(snapshot, CopyMemory(model, live));
    }
    auto rollback = [&](absl::Status s) {
      if (snapshot) live = std::move(*snapshot);
      return s;
    };

    Scheduler::ActiveStream active(*model.scheduler);
    absl::Time first_step = absl::InfinitePast();
    RequestControl control = ControlOf(context);
    control.first_step_start = &first_step;
    const int64_t memory_tokens = target.lease ? target.lease->tokens_seen() : 0;
    const int64_t version_before = target.lease ? target.lease->state_version() : 0;
    scope.ChargeTokens(static_cast<int64_t>(prompt.size()));
    if (absl::Status s = AppendTokens(model, *work, prompt, control, nullptr); !s.ok()) {
      return rollback(s);
    }
    if (target.lease && commit == v1::COMMIT_MODE_KEEP_PROMPT) {
      auto generation_copy = CopyMemory(model, live);
      if (!generation_copy.ok()) return rollback(generation_copy.status());
      copy = *std::move(generation_copy);
      work = &copy;
    }

    const bool want_logprobs = request->logprobs() || request->top_logprobs() > 0;
    // "new": no document memory yet (one-shot, or a session's first tokens); else where it was.
    const char* source =
        !target.lease || target.lease->tokens_seen() == 0 ? "new" : target.lease->state_source();
    bool started = false;
    absl::Time last_token;
    auto on_token = [&](const GeneratedToken& token) {
      const absl::Time now = absl::Now();
      if (!started) {
        started = true;
        v1::GenerateEvent event;
        v1::Started* s = event.mutable_started();
        const absl::Time step = first_step == absl::InfinitePast() ? now : first_step;
        *s->mutable_queue_time() = DurationToProto(step - scope.start());
        s->set_memory_tokens_reused(memory_tokens);
        s->set_state_version_before(version_before);
        s->set_prompt_tokens(static_cast<int64_t>(prompt.size()));
        if (!writer->Write(event)) return false;
        ctx_.metrics->TimeToFirstToken(source, absl::ToDoubleSeconds(now - scope.start()));
      } else {
        ctx_.metrics->InterTokenLatency(absl::ToDoubleSeconds(now - last_token));
      }
      last_token = now;
      v1::GenerateEvent event;
      v1::Delta* d = event.mutable_delta();
      d->add_ids(token.sample.id);
      d->set_text(token.text);
      if (want_logprobs) {
        *d->add_logprobs() = TokenLogprobOf(token.sample.id, token.sample.logprob);
      }
      if (request->top_logprobs() > 0) {
        v1::TopLogprobs* top = d->add_top_logprobs();
        for (const auto& [id, lp] : token.sample.top)
          *top->add_alternatives() = TokenLogprobOf(id, lp);
      }
      return writer->Write(event);
    };
    std::vector<int32_t> history = prompt;
    auto result =
        mnemo::server::Generate(model, *work, params, std::move(history), control, on_token);
    if (!result.ok()) return rollback(result.status());
    scope.ChargeTokens(result->generated);
    ctx_.metrics->PromptTokens(static_cast<int64_t>(prompt.size()));
    ctx_.metrics->GeneratedTokens(result->generated);
    if (result->draft_proposed > 0) {
      ctx_.metrics->DraftTokens(result->draft_proposed, result->draft_accepted);
    }

    if (!result->tail.empty()) {
      v1::GenerateEvent event;
      event.mutable_delta()->set_text(result->tail);
      if (!writer->Write(event)) return rollback(absl::CancelledError("the client went away"));
    }
    const bool commits = target.lease && commit != v1::COMMIT_MODE_SCRATCH;
    const int64_t kept = static_cast<int64_t>(prompt.size()) +
                         (commit == v1::COMMIT_MODE_KEEP_ALL ? result->generated : 0);
    v1::GenerateEvent event;
    v1::Final* f = event.mutable_final();
    switch (result->reason) {
      case engine::api::FinishReason::kLength:
        f->set_finish_reason(v1::FINISH_REASON_LENGTH);
        break;
      case engine::api::FinishReason::kStopString:
        f->set_finish_reason(v1::FINISH_REASON_STOP_STRING);
        break;
      case engine::api::FinishReason::kStopToken:
        f->set_finish_reason(v1::FINISH_REASON_STOP_TOKEN);
        break;
      case engine::api::FinishReason::kEos:
        f->set_finish_reason(v1::FINISH_REASON_EOS);
        break;
    }
    f->mutable_usage()->set_prompt_tokens(static_cast<int64_t>(prompt.size()));
    f->mutable_usage()->set_generated_tokens(result->generated);
    f->mutable_usage()->set_memory_tokens(memory_tokens);
    f->mutable_usage()->set_draft_tokens_proposed(result->draft_proposed);
    f->mutable_usage()->set_draft_tokens_accepted(result->draft_accepted);
    f->set_state_version_after(commits ? version_before + 1 : version_before);
    *f->mutable_time_to_first_token() = DurationToProto(result->first_token_time - scope.start());
    f->set_text(result->text);
    // The session changes only once the client has the result (and, for a SYNC session, once
    // the result is durable; a durable result stays even if the client went away meanwhile).
    if (commits) {
      if (absl::Status s = target.lease->Persist(kept); !s.ok()) return rollback(s);
    }
    if (!writer->Write(event)) {
      if (!commits || !target.lease->persisted()) {
        return rollback(absl::CancelledError("the client went away"));
      }
      target.lease->Commit(kept);
      return absl::CancelledError("the client went away (the result was kept: it is durable)");
    }
    if (commits) target.lease->Commit(kept);
    return absl::OkStatus();
  };
  return scope.Finish(run());
}

grpc::Status InferenceServiceImpl::Ingest(
    grpc::ServerContext* context,
    grpc::ServerReaderWriter<v1::IngestProgress, v1::IngestRequest>* stream) {
  RpcScope scope(ctx_, "Ingest", context);
  auto run = [&]() -> absl::Status {
    RETURN_IF_ERROR(scope.Admit());
    RETURN_IF_ERROR(scope.CheckTokens());
    v1::IngestRequest message;
    (void)v1::TakeRequestParseError();  // what an earlier call on this thread left behind
    if (!stream->Read(&message)) {
      if (grpc::Status e = v1::TakeRequestParseError(); !e.ok()) {
        return InvalidField("messages[0]", e.error_message());
      }
      return InvalidField("session_id", "the stream ended before its first message");
    }
    RETURN_IF_ERROR(CheckRequest(message, ctx_.limits, 0));
    if (message.session_id().empty()) return InvalidField("session_id", "is required");
    ASSIGN_OR_RETURN(std::unique_ptr<SessionLease> lease,
                     ctx_.sessions->Acquire(message.session_id(), message.expected_state_version(),
                                            scope.caller()));
    LoadedModel& model = lease->model();
    SessionMemory& live = lease->memory();
    ASSIGN_OR_RETURN(SessionMemory snapshot, CopyMemory(model, live));
    auto rollback = [&](absl::Status s) {
      live = std::move(snapshot);
      return s;
    };
    Scheduler::ActiveStream active(*model.scheduler);
    RequestControl control = ControlOf(context);
    TextChunker chunker;
    int64_t tokens = 0, segments = 0;
    const int64_t compressed_before = live.state.tokens_compressed();
    auto feed_text = [&](const std::string& text) -> absl::Status {
      if (text.empty()) return absl::OkStatus();
      auto ids = model.tokenizer->Encode(text);
      if (!ids.ok()) return InvalidField("text", std::string(ids.status().message()));
      tokens += static_cast<int64_t>(ids->size());
      scope.ChargeTokens(static_cast<int64_t>(ids->size()));
      return AppendTokens(model, live, *ids, control, &segments);
    };
    auto progress = [&](bool done, int64_t version) {
      v1::IngestProgress p;
      p.set_tokens_ingested(tokens);
      p.set_segments_processed(segments);
      p.set_tokens_compressed(live.state.tokens_compressed() - compressed_before);
      p.set_state_version(version);
      p.set_done(done);
      p.set_pending_tokens(static_cast<int64_t>(live.pending.size()));
      return p;
    };
    int64_t index = 0;
    do {
      // Each message is bounded as it arrives; the tokens per minute are checked before each
      // message: a stream longer than the tenant's quota fails (and is rolled back) once the
      // bucket is empty.
      absl::Status s = index == 0 ? absl::OkStatus() : CheckRequest(message, ctx_.limits, index);
      if (s.ok() && index != 0) s = scope.CheckTokens();
      if (!s.ok()) return rollback(s);
      switch (message.chunk_case()) {
        case v1::IngestRequest::kText:
          if (model.tokenizer == nullptr) {
            s = absl::FailedPreconditionError("the model has no tokenizer: send token ids");
          } else {
            s = feed_text(chunker.Push(message.text()));
          }
          break;
        case v1::IngestRequest::kIds: {
          FieldViolations violations;
          CheckTokenIds(message.ids().ids(), model.model->config().vocab_size,
                        absl::StrCat("messages[", index, "].ids.ids"), violations);
          s = violations.ToStatus();
          // Text held back for the next space goes in first: the document keeps its order
          // ("word", [42], "s" is word 42 s, never 42 word s).
          if (s.ok()) s = feed_text(chunker.Finish());
          if (s.ok()) {
            const auto& ids = message.ids().ids();
            tokens += ids.size();
            scope.ChargeTokens(ids.size());
            s = AppendTokens(model, live, std::span(ids.data(), static_cast<size_t>(ids.size())),
                             control, &segments);
          }
          break;
        }
        case v1::IngestRequest::CHUNK_NOT_SET:
          break;
      }
      if (!s.ok()) return rollback(s);
      if (!stream->Write(progress(false, lease->state_version()))) {
        return rollback(absl::CancelledError("the client went away"));
      }
      ++index;
    } while (stream->Read(&message));
    // The stream ends at the client's half-close, a cancellation, or a message that did not parse.
    if (context->IsCancelled()) return rollback(absl::CancelledError("the client cancelled"));
    if (grpc::Status e = v1::TakeRequestParseError(); !e.ok()) {
      return rollback(
          absl::InvalidArgumentError(absl::StrCat("messages[", index, "]: ", e.error_message())));
    }
    if (absl::Status s = feed_text(chunker.Finish()); !s.ok()) return rollback(s);
    ctx_.metrics->IngestedTokens(tokens);
    if (absl::Status s = lease->Persist(tokens); !s.ok()) return rollback(s);
    if (!stream->Write(progress(true, lease->state_version() + 1))) {
      if (!lease->persisted()) return rollback(absl::CancelledError("the client went away"));
      lease->Commit(tokens);
      return absl::CancelledError("the client went away (the ingest was kept: it is durable)");
    }
    lease->Commit(tokens);
    return absl::OkStatus();
  };
  return scope.Finish(run());
}

grpc::Status InferenceServiceImpl::HandleScore(grpc::ServerContext* context,
                                               const v1::ScoreRequest* request,
                                               v1::ScoreResponse* response) {
  RpcScope scope(ctx_, "Score", context);
  auto run = [&]() -> absl::Status {
    RETURN_IF_ERROR(scope.Admit());
    RETURN_IF_ERROR(scope.CheckTokens());
    if (request->input_case() == v1::ScoreRequest::INPUT_NOT_SET) {
      return InvalidField("input", "set text or ids");
    }
    if (request->session_id().empty() && request->commit()) {
      return InvalidField("commit", "needs a session_id");
    }
    ASSIGN_OR_RETURN(Target target, Resolve(ctx_, scope.caller(), request->session_id(),
                                            request->model(), request->expected_state_version()));
    LoadedModel& model = *target.model;
    ASSIGN_OR_RETURN(
        std::vector<int32_t> tokens,
        InputTokens(model, request->input_case() == v1::ScoreRequest::kText, request->text(),
                    request->input_case() == v1::ScoreRequest::kIds, request->ids(), ctx_.limits));
    if (tokens.empty()) {
      return InvalidField(request->input_case() == v1::ScoreRequest::kText ? "text" : "ids",
                          "is empty");
    }
    SessionMemory& live = target.live();
    std::optional<SessionMemory> snapshot;
    SessionMemory copy;
    SessionMemory* work = &live;
    if (target.lease && request->commit()) {
      ASSIGN_OR_RETURN(snapshot, CopyMemory(model, live));
    } else if (target.lease) {
      ASSIGN_OR_RETURN(copy, CopyMemory(model, live));
      work = &copy;
    }
    RequestControl control = ControlOf(context);
    scope.ChargeTokens(static_cast<int64_t>(tokens.size()));
    auto scored = mnemo::server::Score(model, *work, tokens, control);
    if (!scored.ok()) {
      if (snapshot) live = std::move(*snapshot);
      return scored.status();
    }
    double nats = 0;
    std::vector<int32_t> ids;
    for (const ScoredToken& t : *scored) {
      *response->add_tokens() = TokenLogprobOf(t.id, t.logprob);
      nats -= t.logprob;
      ids.push_back(t.id);
    }
    response->set_total_bits(nats / std::log(2.0));
    if (model.tokenizer != nullptr && !ids.empty()) {
      auto text = model.tokenizer->Decode(ids);
      if (text.ok() && !text->empty()) {
        response->set_bits_per_byte(response->total_bits() / static_cast<double>(text->size()));
      }
    }
    ctx_.metrics->PromptTokens(static_cast<int64_t>(tokens.size()));
    int64_t version = target.lease ? target.lease->state_version() : 0;
    if (target.lease && request->commit()) {
      if (absl::Status s = target.lease->Persist(static_cast<int64_t>(tokens.size())); !s.ok()) {
        live = std::move(*snapshot);
        return s;
      }
      target.lease->Commit(static_cast<int64_t>(tokens.size()));
      version = target.lease->state_version();
    }
    response->set_state_version(version);
    return absl::OkStatus();
  };
  return scope.Finish(run());
}

grpc::Status InferenceServiceImpl::StreamedScore(
    grpc::ServerContext* context,
    grpc::ServerUnaryStreamer<v1::ScoreRequest, v1::ScoreResponse>* stream) {
  return ServeUnary(ctx_, "Score", context, stream,
                    [this](auto* c, auto* req, auto* resp) { return HandleScore(c, req, resp); });
}

}  // namespace mnemo::server
