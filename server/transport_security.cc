// TLS credentials of the listener and of replica-to-replica calls; start-up checks of the PEM
// files with OpenSSL (the library gRPC itself uses), so that errors name the file.
#include "server/transport_security.h"

#include <algorithm>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <sstream>
#include <utility>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "absl/strings/str_cat.h"

#include "base/status_macros.h"
#include "grpcpp/security/tls_certificate_provider.h"
#include "grpcpp/security/tls_certificate_verifier.h"
#include "grpcpp/security/tls_credentials_options.h"

namespace mnemo::server {
namespace {

absl::StatusOr<std::string> ReadFile(const std::string& path, const char* flag) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::InvalidArgumentError(absl::StrCat(flag, " ", path, ": cannot read it"));
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

// The oldest queued OpenSSL error as text (and the queue emptied), for messages.
std::string OpenSslError() {
  const unsigned long code = ERR_get_error();  // NOLINT(google-runtime-int): OpenSSL's type
  ERR_clear_error();
  if (code == 0) return "no PEM block found";
  char text[256];
  ERR_error_string_n(code, text, sizeof(text));
  return text;
}

struct BioFree {
  void operator()(BIO* bio) const { BIO_free(bio); }
};
struct X509Free {
  void operator()(X509* x509) const { X509_free(x509); }
};
struct KeyFree {
  void operator()(EVP_PKEY* key) const { EVP_PKEY_free(key); }
};
using X509Ptr = std::unique_ptr<X509, X509Free>;

// Every certificate in `pem`, in order; INVALID_ARGUMENT naming the file when there is none or a
// block does not parse.
absl::StatusOr<std::vector<X509Ptr>> ReadCertificates(const std::string& pem,
                                                      const std::string& path, const char* flag) {
  std::unique_ptr<BIO, BioFree> bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  std::vector<X509Ptr> certs;
  ERR_clear_error();
  while (true) {
    X509Ptr cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
    if (cert == nullptr) break;
    certs.push_back(std::move(cert));
  }
  // The loop ends at the end of the data (PEM_R_NO_START_LINE) or at a broken block.
  const unsigned long last = ERR_peek_last_error();  // NOLINT(google-runtime-int)
  const bool clean_end =
      ERR_GET_LIB(last) == ERR_LIB_PEM && ERR_GET_REASON(last) == PEM_R_NO_START_LINE;
  if (certs.empty() || (last != 0 && !clean_end)) {
    return absl::InvalidArgumentError(absl::StrCat(flag, " ", path, ": not a PEM certificate",
                                                   certs.empty() ? "" : " chain", " (",
                                                   OpenSslError(), ")"));
  }
  ERR_clear_error();
  return certs;
}

void WarnIfExpired(X509* cert, const std::string& path, const char* flag) {
  if (X509_cmp_current_time(X509_get0_notAfter(cert)) < 0) {
    std::fprintf(stderr,
                 "mnemo-server: warning: %s %s: the certificate has expired (clients refuse it "
                 "until the file is replaced)\n",
                 flag, path.c_str());
  } else if (X509_cmp_current_time(X509_get0_notBefore(cert)) > 0) {
    std::fprintf(stderr, "mnemo-server: warning: %s %s: the certificate is not valid yet\n", flag,
                 path.c_str());
  }
}

unsigned int IntervalSeconds(absl::Duration interval) {
  const int64_t seconds = absl::ToInt64Seconds(absl::Ceil(interval, absl::Seconds(1)));
  return static_cast<unsigned int>(std::clamp<int64_t>(seconds, 1, 1 << 30));
}

}  // namespace

absl::Status CheckTlsFlags(const TlsFiles& files) {
  if (files.cert.empty() != files.key.empty()) {
    return absl::InvalidArgumentError("--tls-cert and --tls-key go together: give both or neither");
  }
  if (!files.enabled()) {
    if (files.mutual()) {
      return absl::InvalidArgumentError("--tls-client-ca needs --tls-cert and --tls-key");
    }
    return absl::OkStatus();
  }
  if (files.reload_interval <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("--tls-reload-interval must be positive");
  }
  return absl::OkStatus();
}

absl::StatusOr<TlsPem> ReadTlsPem(const TlsFiles& files) {
  TlsPem pem;
  ASSIGN_OR_RETURN(pem.cert, ReadFile(files.cert, "--tls-cert"));
  ASSIGN_OR_RETURN(pem.key, ReadFile(files.key, "--tls-key"));
  if (files.mutual()) {
    ASSIGN_OR_RETURN(pem.client_ca, ReadFile(files.client_ca, "--tls-client-ca"));
  }
  return pem;
}

absl::StatusOr<absl::Time> ValidateTlsPem(const TlsPem& pem, const TlsFiles& files) {
  ASSIGN_OR_RETURN(std::vector<X509Ptr> chain,
                   ReadCertificates(pem.cert, files.cert, "--tls-cert"));
  WarnIfExpired(chain.front().get(), files.cert, "--tls-cert");
  std::unique_ptr<BIO, BioFree> bio(
      BIO_new_mem_buf(pem.key.data(), static_cast<int>(pem.key.size())));
  ERR_clear_error();
  std::unique_ptr<EVP_PKEY, KeyFree> key(
      PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
  if (key == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--tls-key ", files.key, ": not an unencrypted PEM private key (", OpenSslError(), ")"));
  }
  if (X509_check_private_key(chain.front().get(), key.get()) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError(absl::StrCat(
        "--tls-key ", files.key, " does not match the certificate in --tls-cert ", files.cert));
  }
  if (files.mutual()) {
    RETURN_IF_ERROR(ReadCertificates(pem.client_ca, files.client_ca, "--tls-client-ca").status());
  }
  std::tm not_after{};
  if (ASN1_TIME_to_tm(X509_get0_notAfter(chain.front().get()), &not_after) != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--tls-cert ", files.cert, ": unreadable expiry time"));
  }
  return absl::FromTimeT(timegm(&not_after));
}

std::shared_ptr<grpc::ServerCredentials> MakeServerCredentials(const TlsFiles& files) {
  if (!files.enabled()) return grpc::InsecureServerCredentials();
  auto provider = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
      files.key, files.cert, files.client_ca, IntervalSeconds(files.reload_interval));
  grpc::experimental::TlsServerCredentialsOptions options(provider);
  options.watch_identity_key_cert_pairs();
  if (files.mutual()) {
    options.watch_root_certs();
    options.set_cert_request_type(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  } else {
    options.set_cert_request_type(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  }
  return grpc::experimental::TlsServerCredentials(options);
}

std::shared_ptr<grpc::ChannelCredentials> MakeReplicaChannelCredentials(const TlsFiles& files) {
  if (!files.enabled()) return grpc::InsecureChannelCredentials();
  auto provider = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
      files.key, files.cert, files.client_ca, IntervalSeconds(files.reload_interval));
  grpc::experimental::TlsChannelCredentialsOptions options;
  options.set_certificate_provider(provider);
  options.watch_identity_key_cert_pairs();
  if (files.mutual()) options.watch_root_certs();
  // The chain is verified against the roots; the host-name check is what the no-op verifier
  // leaves out.
  options.set_verify_server_certs(true);
  options.set_certificate_verifier(std::make_shared<grpc::experimental::NoOpCertificateVerifier>());
  options.set_check_call_host(false);
  return grpc::experimental::TlsCredentials(options);
}

std::string DescribeTransport(const TlsFiles& files) {
  if (!files.enabled()) return "plaintext";
  std::string text = absl::StrCat(files.mutual() ? "mTLS" : "TLS", " (", files.cert);
  if (files.mutual()) absl::StrAppend(&text, ", client CA ", files.client_ca);
  absl::StrAppend(&text, ", re-read every ", IntervalSeconds(files.reload_interval), "s)");
  return text;
}

void WithoutPlugins::UpdatePlugins(
    std::vector<std::unique_ptr<grpc::ServerBuilderPlugin>>* plugins) {
  plugins->erase(std::remove_if(plugins->begin(), plugins->end(),
                                [this](const std::unique_ptr<grpc::ServerBuilderPlugin>& plugin) {
                                  return std::find(names_.begin(), names_.end(), plugin->name()) !=
                                         names_.end();
                                }),
                 plugins->end());
}

}  // namespace mnemo::server
