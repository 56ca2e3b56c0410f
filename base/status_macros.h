// Error-propagation macros for absl::Status / absl::StatusOr, the project's error vocabulary.
// Abseil 20220623 (Debian bookworm) ships no status_macros.h, so we keep our own here.
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define MNEMO_CONCAT_INNER_(a, b) a##b
#define MNEMO_CONCAT_(a, b) MNEMO_CONCAT_INNER_(a, b)

// Returns from the enclosing function if `expr` (an absl::Status) is not OK.
#define RETURN_IF_ERROR(expr)                      \
  do {                                             \
    ::absl::Status mnemo_status_ = (expr);         \
    if (!mnemo_status_.ok()) return mnemo_status_; \
  } while (0)

// `ASSIGN_OR_RETURN(auto x, F())`: assigns the value of an absl::StatusOr or returns its error.
#define ASSIGN_OR_RETURN(lhs, expr) \
  MNEMO_ASSIGN_OR_RETURN_IMPL_(MNEMO_CONCAT_(mnemo_statusor_, __LINE__), lhs, expr)

#define MNEMO_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, expr)  \
  auto statusor = (expr);                                  \
  if (!statusor.ok()) return std::move(statusor).status(); \
  lhs = std::move(statusor).value()
