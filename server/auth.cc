#include "server/auth.h"

#include <algorithm>
#include <cstdio>

#include <nlohmann/json.hpp>
#include <openssl/sha.h>

#include "absl/strings/str_cat.h"

#include "base/read_file.h"
#include "base/status_macros.h"

namespace mnemo::server {

using Json = nlohmann::json;

struct Authenticator::Index {
  std::map<std::string, Caller> by_token_hash;
  std::map<std::string, Caller> by_subject;
};

namespace {

absl::Status Invalid(const std::string& where, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(where, ": ", what));
}

bool IsTenantName(const std::string& name) {
  return !name.empty() && name.size() <= 64 && std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
  });
}

bool IsSha256Hex(const std::string& s) {
  return s.size() == 64 && std::all_of(s.begin(), s.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

absl::StatusOr<std::vector<std::string>> Strings(const Json& j, const std::string& where) {
  if (!j.is_array()) return Invalid(where, "must be a list of strings");
  std::vector<std::string> out;
  for (const Json& v : j) {
    if (!v.is_string()) return Invalid(where, "must be a list of strings");
    out.push_back(v.get<std::string>());
  }
  return out;
}

absl::StatusOr<TenantQuotas> ParseQuotas(const Json& j, const std::string& where) {
  if (!j.is_object()) return Invalid(where, "must be an object");
  TenantQuotas q;
  const std::map<std::string, int64_t*> fields = {{"sessions", &q.sessions},
                                                  {"state_bytes", &q.state_bytes},
                                                  {"concurrent_requests", &q.concurrent_requests},
                                                  {"tokens_per_minute", &q.tokens_per_minute}};
  for (const auto& [key, value] : j.items()) {
    auto it = fields.find(key);
    if (it == fields.end()) return Invalid(where, absl::StrCat("unknown quota \"", key, "\""));
    if (!value.is_number_integer() || value.get<int64_t>() < 0) {
      return Invalid(absl::StrCat(where, ".", key), "must be an integer ≥ 0 (0: no limit)");
    }
    *it->second = value.get<int64_t>();
  }
  return q;
}

absl::StatusOr<Tenant> ParseTenant(const Json& j, const std::string& where) {
  if (!j.is_object()) return Invalid(where, "must be an object");
  Tenant t;
  for (const auto& [key, value] : j.items()) {
    const std::string at = absl::StrCat(where, ".", key);
    if (key == "name") {
      if (!value.is_string() || !IsTenantName(value.get<std::string>())) {
        return Invalid(at, "must be 1 … 64 characters of [A-Za-z0-9._-]");
      }
      t.name = value.get<std::string>();
    } else if (key == "admin") {
      if (!value.is_boolean()) return Invalid(at, "must be true or false");
      t.admin = value.get<bool>();
    } else if (key == "token_sha256") {
      ASSIGN_OR_RETURN(t.token_sha256, Strings(value, at));
      for (const std::string& h : t.token_sha256) {
        if (!IsSha256Hex(h)) {
          return Invalid(at, "each must be a SHA-256 as 64 lowercase hex digits (never a token)");
        }
      }
    } else if (key == "certificate_subjects") {
      ASSIGN_OR_RETURN(t.certificate_subjects, Strings(value, at));
      for (const std::string& s : t.certificate_subjects) {
        if (s.empty()) return Invalid(at, "subjects must not be empty");
      }
    } else if (key == "quotas") {
      ASSIGN_OR_RETURN(t.quotas, ParseQuotas(value, at));
    } else {
      return Invalid(where, absl::StrCat("unknown field \"", key, "\""));
    }
  }
  if (t.name.empty()) return Invalid(where, "\"name\" is required");
  return t;
}

}  // namespace

absl::StatusOr<AuthConfig> ParseAuthConfig(std::string_view json) {
  const Json j = Json::parse(json, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return Invalid("top level", "not a JSON object");
  AuthConfig config;
  for (const auto& [key, value] : j.items()) {
    if (key != "tenants") return Invalid("top level", absl::StrCat("unknown field \"", key, "\""));
    if (!value.is_array()) return Invalid("tenants", "must be a list");
    for (size_t i = 0; i < value.size(); ++i) {
      ASSIGN_OR_RETURN(Tenant t, ParseTenant(value[i], absl::StrCat("tenants[", i, "]")));
      config.tenants.push_back(std::move(t));
    }
  }
  // One name, token or subject names one tenant.
  std::map<std::string, std::string> names, tokens, subjects;
  for (size_t i = 0; i < config.tenants.size(); ++i) {
    const Tenant& t = config.tenants[i];
    const std::string where = absl::StrCat("tenants[", i, "]");
    if (!names.emplace(t.name, t.name).second) {
      return Invalid(where, absl::StrCat("tenant \"", t.name, "\" is defined twice"));
    }
    for (const std::string& h : t.token_sha256) {
      auto [it, added] = tokens.emplace(h, t.name);
      if (!added && it->second != t.name) {
        return Invalid(where, absl::StrCat("a token_sha256 of tenant \"", t.name,
                                           "\" belongs to tenant \"", it->second, "\" too"));
      }
    }
    for (const std::string& s : t.certificate_subjects) {
      auto [it, added] = subjects.emplace(s, t.name);
      if (!added && it->second != t.name) {
        return Invalid(where, absl::StrCat("certificate subject \"", s, "\" of tenant \"", t.name,
                                           "\" belongs to tenant \"", it->second, "\" too"));
      }
    }
  }
  return config;
}

std::string Sha256Hex(std::string_view data) {
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(data.data()), data.size(), digest);
  std::string hex;
  hex.reserve(2 * SHA256_DIGEST_LENGTH);
  constexpr char kHex[] = "0123456789abcdef";
  for (unsigned char b : digest) {
    hex.push_back(kHex[b >> 4]);
    hex.push_back(kHex[b & 15]);
  }
  return hex;
}

Authenticator::Authenticator() = default;

Authenticator::Authenticator(std::string path) : path_(std::move(path)) {}

absl::StatusOr<std::unique_ptr<Authenticator>> Authenticator::Open(std::string path,
                                                                   absl::Duration interval) {
  std::unique_ptr<Authenticator> auth(new Authenticator(std::move(path)));
  if (absl::Status read = auth->Reload().status(); !read.ok()) {
    return absl::Status(read.code(),
                        absl::StrCat("--auth-file ", auth->path_, ": ", read.message()));
  }
  auth->watcher_ = std::thread([a = auth.get(), interval] { a->WatchLoop(interval); });
  return auth;
}

Authenticator::~Authenticator() {
  {
    MutexLock lock(&mu_);
    stopping_ = true;
  }
  stop_cv_.SignalAll();
  if (watcher_.joinable()) watcher_.join();
}

void Authenticator::WatchLoop(absl::Duration interval) {
  std::string last_error;  // logged once, not every interval
  while (true) {
    {
      MutexLock lock(&mu_);
      if (stopping_) return;
      stop_cv_.WaitFor(&mu_, absl::ToChronoMilliseconds(interval));
      if (stopping_) return;
    }
    absl::StatusOr<bool> reloaded = Reload();
    if (!reloaded.ok()) {
      const std::string error(reloaded.status().message());
      if (error != last_error) {
        std::fprintf(stderr, "mnemo-server: %s: %s; the previous contents stay in force\n",
                     path_.c_str(), error.c_str());
      }
      last_error = error;
      continue;
    }
    last_error.clear();
    if (*reloaded) {
      std::fprintf(stderr, "mnemo-server: %s changed: tenants reloaded\n", path_.c_str());
    }
  }
}

absl::StatusOr<bool> Authenticator::Reload() {
  if (path_.empty()) return false;
  ASSIGN_OR_RETURN(std::string text, ReadFile(path_));
  {
    MutexLock lock(&mu_);
    if (index_ != nullptr && text == contents_) return false;
  }
  ASSIGN_OR_RETURN(AuthConfig config, ParseAuthConfig(text));
  auto index = std::make_shared<Index>();
  for (const Tenant& t : config.tenants) {
    const Caller caller{t.name, t.admin, t.quotas};
    for (const std::string& h : t.token_sha256) index->by_token_hash[h] = caller;
    for (const std::string& s : t.certificate_subjects) index->by_subject[s] = caller;
  }
  MutexLock lock(&mu_);
  index_ = std::move(index);
  contents_ = std::move(text);
  ++generation_;
  return true;
}

int64_t Authenticator::generation() const {
  MutexLock lock(&mu_);
  return generation_;
}

absl::StatusOr<Caller> Authenticator::Authenticate(std::optional<std::string_view> token,
                                                   std::optional<std::string_view> subject) const {
  if (path_.empty()) return Caller{"", /*admin=*/true, {}};
  std::shared_ptr<const Index> index;
  {
    MutexLock lock(&mu_);
    index = index_;
  }
  if (token.has_value()) {
    // Looked up by its hash: neither the table nor the time taken says anything about a token.
    auto it = index->by_token_hash.find(Sha256Hex(*token));
    if (it != index->by_token_hash.end()) return it->second;
    return absl::UnauthenticatedError("the bearer token is not valid");
  }
  if (subject.has_value()) {
    auto it = index->by_subject.find(std::string(*subject));
    if (it != index->by_subject.end()) return it->second;
  }
  return absl::UnauthenticatedError(
      "credentials required: send \"authorization: Bearer <token>\" metadata (or a client "
      "certificate the server maps to a tenant)");
}

}  // namespace mnemo::server
